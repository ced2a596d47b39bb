"""Settings declared once: this table drives the TOML loader, the frozen Config dataclass and the docs.

Each setting has a dotted key (its TOML path), a parser, a default and a help line. Errors name the full key
path and the file. ``layerboot config show`` prints the effective values; docs/config.md is generated from
:func:`settings_reference`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.paths import DEFAULT_CONFIG_FILE, DEFAULT_STATE_DIR

CONFIG_ENV = "LAYERBOOT_CONFIG"


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty path string")
    return Path(value)


MAX_INT = 2 ** 63 - 1           # what SQLite and the C tools layerboot drives can hold


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"expected an integer from 0 to {MAX_INT}, got {value if value < 0 else 'a larger one'}")
    return value


def _port(value: Any) -> int:
    if _int(value) > 65535:
        raise ValueError(f"expected a TCP port from 0 to 65535, got {value}")
    return value


MAX_THREADS = 1024


def _threads(value: Any) -> int:
    if _int(value) > MAX_THREADS:
        raise ValueError(f"expected a number of threads from 0 to {MAX_THREADS}, got {value}")
    return value


def _seconds(value: Any) -> int:
    if not 1 <= _int(value) <= 86400:
        raise ValueError(f"expected a number of seconds from 1 to 86400, got {value}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _incident_types(value: Any) -> Any:
    from layerboot.server.monitor.config import parse_incident_types
    return parse_incident_types(value)


def _render_incident_types(value: Any) -> str:
    from layerboot.server.monitor.config import render_incident_types
    return render_incident_types(value)


def _default_incident_types() -> Any:
    from layerboot.server.monitor.config import DEFAULT_TYPES
    return DEFAULT_TYPES


def _mirror_urls(value: Any) -> Any:
    from layerboot.overlays.mirrors import parse_urls
    return parse_urls(value)


def _mirror_profiles(value: Any) -> Any:
    from layerboot.overlays.mirrors import parse_profiles
    return parse_profiles(value)


def _render_mirror_profiles(value: Any) -> str:
    from layerboot.overlays.mirrors import render_profiles
    return render_profiles(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


@dataclass(frozen=True)
class Setting:
    key: str                      # dotted TOML path, e.g. "store.root"
    parse: Callable[[Any], Any]
    default: Any
    help: str
    # A structured section (its whole TOML table goes to ``parse``; errors carry a ``path`` below the key),
    # rendered back to TOML by ``render``.
    render: Callable[[Any], str] | None = None
    shown: str = ""               # the reference's "default" column when the value is too big to print

    @property
    def field(self) -> str:
        return self.key.replace(".", "_")


GiB = 1024 ** 3

SETTINGS: tuple[Setting, ...] = (
    Setting("store.root", _path, DEFAULT_STATE_DIR, "directory of the layer store (objects, profiles, manifests, keys)"),
    Setting("store.compression", _choice("zstd", "xz", "gzip", "lz4", "lzo"), "zstd",
            "squashfs compressor for new layers"),
    Setting("store.block_size", _int, 131072, "squashfs block size in bytes for new layers"),
    Setting("manifest.cmdline", _str, "console=ttyS0",
            "default kernel command line recorded in new profiles"),
    Setting("initrd.kernel", _choice("generic", "cloud"), "generic",
            "kernel 'layerboot initrd build' uses: Debian's generic linux-image-amd64 (hardware) or the cloud "
            "kernel (VMs only, smaller); --kernel, --kernel-version and --kernel-from override"),
    Setting("initrd.drivers", _choice("hardware", "virtio"), "hardware",
            "driver set in the initramfs: server NICs and storage plus virtio, or virtio only (docs/hardware.md)"),
    Setting("initrd.add_drivers", _str, "", "extra kernel modules for the initramfs, comma separated"),
    Setting("initrd.omit_drivers", _str, "", "kernel modules to leave out of the driver set, comma separated"),
    Setting("initrd.firmware_dirs", _str, "/lib/firmware/updates:/lib/firmware",
            "where the initramfs build looks for the firmware its drivers name, colon separated"),
    Setting("bake.max_bytes", _int, 16 * GiB,
            "largest total unpacked size an upload may expand to (decompression-bomb quota)"),
    Setting("bake.max_files", _int, 2_000_000, "most members an upload may contain"),
    Setting("bake.special_files", _choice("reject", "keep"), "reject",
            "what to do with fifos and sockets in an upload: reject the upload or keep them"),
    Setting("bake.threads", _threads, 0, "compressor threads for capture and bake (0: one per core)"),
    Setting("server.listen", _str, "0.0.0.0", "address layerbootd listens on for HTTP"),
    Setting("server.port", _port, 8080, "HTTP port of layerbootd"),
    Setting("server.unknown_mac", _choice("refuse", "default", "discover"), "refuse",
            "policy for a MAC that is not registered: refuse it, boot server.default_profile, or give it the "
            "discovery boot (it reports its hardware and waits to be accepted: docs/nodes.md)"),
    Setting("server.default_profile", _str, "", "profile served to unknown MACs when the policy is 'default'"),
    Setting("server.ssh_port", _port, 0, "SFTP upload port (0: disabled)"),
    Setting("server.bake_workers", _int, 1, "uploads baked at the same time"),
    Setting("server.queue_size", _int, 64, "uploads that may wait for a bake before new ones are refused"),
    Setting("server.header_timeout", _seconds, 30,
            "seconds a client has to send a complete request head, counted from connecting or from the end of "
            "its previous response (slowloris); an idle keep-alive connection is closed after as long"),
    Setting("server.read_timeout", _seconds, 60,
            "seconds a request body (an upload, a boot report) may go without a byte before the request is "
            "answered 408 and a partial upload discarded"),
    Setting("server.send_timeout", _seconds, 60,
            "seconds a client may take no byte of a response (a download) before its connection is closed"),
    Setting("server.max_connections_per_client", _int, 32,
            "open HTTP connections per client address; more are answered 429 at once (0: no limit; raise it "
            "for a proxy that forwards many nodes)"),
    Setting("server.max_downloads_per_node", _int, 8,
            "object downloads one node may have in progress; more get 429 (0: no limit)"),
    Setting("server.max_uploads_per_node", _int, 2,
            "HTTP uploads one node may be sending at once; more get 429 (0: no limit)"),
    Setting("server.max_queued_per_node", _int, 4,
            "uploads of one node that may wait in the bake queue; more get 429 (0: no limit)"),
    Setting("server.debug", _bool, False, "debug messages in the daemon's log"),
    Setting("server.access_log", _bool, True,
            "log one line per HTTP request (client, method, path, status, bytes, duration; journal fields)"),
    Setting("server.public_url", _str, "",
            "base URL nodes are told to use (e.g. http://10.0.0.1:8080); empty: the Host the request came in on"),
    Setting("server.boot_token_ttl", _int, 86400,
            "seconds a boot token (read-only; minted by /boot/MAC.ipxe for the node's kernel command line) "
            "stays valid after it was issued"),
    Setting("server.boot_scripts_per_minute", _int, 60,
            "boot scripts (each mints a boot token) one client address may fetch per minute (0: no limit)"),
    Setting("server.node_secret_claim", _choice("asset-key", "mac"), "asset-key",
            "which nodes may claim a node secret at boot: 'asset-key' (only with proof of the asset key set "
            "with 'nodes register/set --asset-key') or 'mac' (also nodes without one: trusts the boot network)"),
    Setting("server.node_secret_claims_per_hour", _int, 12,
            "node secrets one node may claim per hour (0: no limit)"),
    Setting("server.database", _str, "",
            "where layerbootd keeps nodes and uploads: empty for the store's SQLite file "
            "(state/layerbootd.sqlite), or postgresql://USER@HOST/DBNAME (password in ~/.pgpass)"),
    Setting("server.auto_migrate", _bool, True,
            "apply pending schema migrations when layerbootd (or a layerboot command) opens the database; "
            "false: refuse until 'layerboot db migrate'"),
    Setting("server.retry_initial", _int, 15,
            "seconds before a bake that failed for a reason other than the upload's content (full or failing "
            "disk, a killed tool) is tried again; doubled after each failure"),
    Setting("server.retry_max", _int, 600, "longest wait in seconds between two tries of such a bake"),
    Setting("server.node_max_uploads", _int, 8,
            "uploads a node may keep on the server: queued + failed (kept) + held for approval (0: no limit)"),
    Setting("server.node_max_bytes", _int, 32 * GiB,
            "bytes a node may keep on the server: queued and failed files, held layers (0: no limit)"),
    Setting("server.failed_upload_keep", _int, 86400,
            "seconds a refused upload's file is kept for inspection (it counts against the node's quota)"),
    Setting("server.verify_objects", _bool, True,
            "hash each object before serving it for the first time (again after it changes on disk); a damaged "
            "object is moved to quarantine/ and never served"),
    Setting("server.scrub_interval", _int, 7 * 86400,
            "seconds between two re-hashings of every object in the store by layerbootd, for damage that leaves "
            "a file's size and times alone (0: never)"),
    Setting("server.upload_policy", _choice("hold", "auto"), "hold",
            "default for profiles without their own policy: 'auto' appends a baked upload as a new generation, "
            "'hold' waits for 'layerboot uploads approve'"),
    Setting("server.tls_cert", _str, "",
            "PEM certificate (chain) file: layerbootd also serves HTTPS on server.tls_port, and the console "
            "redirects browsers there; nodes keep plain HTTP on server.port (iPXE and stage1 speak http://)"),
    Setting("server.tls_key", _str, "", "PEM private key of server.tls_cert (root-only)"),
    Setting("server.tls_port", _port, 8443, "HTTPS port when server.tls_cert is set"),
    Setting("server.trusted_proxies", _str_list, (),
            "addresses of reverse proxies (nginx) whose X-Forwarded-For and X-Forwarded-Proto headers are "
            "believed: the client address for login limits and logs, https for Secure cookies (docs/console.md)"),
    Setting("console.enabled", _bool, True, "serve the admin web console under /console/ (the API under /api/v1 "
            "stays)"),
    Setting("console.session_idle", _int, 8 * 3600,
            "seconds a console login stays valid without use (sessions live in the database)"),
    Setting("console.session_max_age", _int, 24 * 3600, "seconds a console login stays valid at most"),
    Setting("console.login_failures_per_account", _int, 5,
            "failed logins of one account within console.login_window before its logins are refused (0: no limit)"),
    Setting("console.login_failures_per_address", _int, 20,
            "failed logins from one client address within console.login_window before its logins are refused "
            "(0: no limit)"),
    Setting("console.login_window", _int, 900, "seconds over which failed logins are counted"),
    Setting("console.import_dir", _str, "",
            "directory of live ISO images (*.iso) and OCI images (OCI archives *.tar, OCI layout directories) the "
            "console offers for base import; empty: imports/ in the store"),
    Setting("fleet.template_dirs", _str_list, (),
            "directories of per-node templates (Jinja2), searched before the store's templates/ and layerboot's "
            "own (docs/nodes.md)"),
    Setting("fleet.domain", _str, "", "DNS domain of nodes whose cluster and groups set none"),
    Setting("fleet.dns_servers", _str_list, ("server",),
            "DNS servers of nodes whose cluster and groups set none; 'server' is layerbootd's address "
            "(server.public_url); an empty list leaves DNS to the boot network"),
    Setting("fleet.ntp_servers", _str_list, ("server",), "time servers of nodes whose cluster and groups set none"),
    Setting("fleet.syslog_servers", _str_list, ("server",), "log servers of nodes whose cluster and groups set none"),
    Setting("fleet.ssh_host_key_types", _str_list, ("ed25519", "ecdsa", "rsa"),
            "SSH host keys made for each node (ed25519, ecdsa, rsa)"),
    Setting("fleet.discovery_profile", _str, "",
            "profile whose kernel and initrd the discovery boot uses (server.unknown_mac = \"discover\")"),
    Setting("fleet.discovery_poll", _int, 10, "seconds between two questions of a waiting discovered machine"),
    Setting("fleet.discovery_requests_per_minute", _int, 30,
            "discovery reports and polls one client address may send per minute (0: no limit)"),
    Setting("fleet.max_pending", _int, 256, "machines that may wait in 'nodes pending' at once; more are refused"),
    Setting("fleet.pending_keep", _int, 7 * 86400,
            "seconds a pending or rejected machine is kept after its last report"),
    Setting("fleet.menu_timeout", _int, 5,
            "seconds the discovery boot's iPXE menu waits before it reports the machine (0: no menu)"),
    Setting("server.replicas", _bool, False,
            "run several layerbootd replicas on one store and one PostgreSQL database (server.database): bakes, "
            "the monitor and clean-up are coordinated through the database (docs/scale.md); false: one "
            "layerbootd per store, enforced by state/layerbootd.lock"),
    Setting("server.replica_lease", _seconds, 60,
            "seconds a replica's claim on a bake or an upload (and the monitor's turn) lasts without being "
            "renewed; after a replica dies, another one takes its work over within this time"),
    Setting("mirrors.urls", _mirror_urls, (),
            "HTTP caches that may serve layers to nodes (http://HOST[:PORT][/PATH] base URLs), named in every "
            "profile's signed manifests; nodes try them before this server (docs/scale.md)"),
    Setting("mirrors.order", _choice("latency", "listed"), "latency",
            "how nodes order the mirrors: 'latency' (the nearest first, measured at boot) or 'listed'"),
    Setting("mirrors.profiles", _mirror_profiles, (),
            "per-profile mirror lists replacing mirrors.urls: a table of profile = [URLs] ([] : none)",
            render=_render_mirror_profiles, shown="none"),
    Setting("monitor.enabled", _bool, True,
            "run the fleet monitor inside layerbootd (incidents, action ladders, notifications; docs/monitor.md)"),
    Setting("monitor.interval", _int, 15, "seconds between two checks of every node"),
    Setting("monitor.heartbeat_timeout", _int, 300,
            "seconds without a heartbeat or boot activity after which a node that sends heartbeats is down"),
    Setting("monitor.stuck_after", _int, 600,
            "seconds a node may take from fetching its iPXE script to stage1's report before it is stuck"),
    Setting("monitor.power_file", _str, "",
            "TOML file of BMC/power-controller credentials per node, root-only (mode 0600); empty: "
            "state/power.toml in the store"),
    Setting("monitor.power_timeout", _int, 30, "seconds one power command (IPMI, Redfish, QMP) may take"),
    Setting("monitor.incidents", _incident_types, _default_incident_types(),
            "incident types: thresholds, damping, notifications and action ladders (see docs/monitor.md)",
            render=_render_incident_types, shown="see docs/monitor.md"),
    Setting("notify.email_to", _str_list, (), "addresses that get incident mail (empty: no email channel)"),
    Setting("notify.email_from", _str, "", "sender of incident mail; empty: layerbootd@ this host's name"),
    Setting("notify.smtp_host", _str, "localhost", "SMTP server for incident mail"),
    Setting("notify.smtp_port", _int, 25, "its port (587 with starttls, 465 with tls)"),
    Setting("notify.smtp_security", _choice("none", "starttls", "tls"), "none", "how the SMTP connection is secured"),
    Setting("notify.smtp_user", _str, "", "SMTP login user (empty: no login)"),
    Setting("notify.smtp_password_file", _str, "", "file holding the SMTP password (root-only)"),
    Setting("notify.webhook_url", _str, "", "URL that gets each incident message as a JSON POST (empty: none)"),
    Setting("notify.webhook_timeout", _int, 10, "seconds a webhook POST may take"),
    Setting("gc.keep_generations", _int, 5, "'store gc' keeps the last N generations of every profile"),
    Setting("gc.keep_days", _int, 14,
            "'store gc' keeps generations, and layers no profile uses, that are newer than this many days"),
    Setting("gc.booted_days", _int, 30,
            "'store gc' keeps every generation a node booted within this many days (from the boot reports)"),
    Setting("pxe.interface", _str, "", "interface 'layerboot pxe' serves DHCP/TFTP on (--interface overrides)"),
    Setting("pxe.server_url", _str, "",
            "layerbootd as PXE nodes reach it; empty: server.public_url (--server-url overrides)"),
    Setting("pxe.range", _str, "",
            "FIRST,LAST: 'layerboot pxe' is the DHCP server for this range; empty: proxy-DHCP (--range/--proxy)"),
    Setting("pxe.efi_binary", _choice("snponly.efi", "ipxe.efi", "shimx64.efi"), "snponly.efi",
            "what UEFI PXE ROMs get: an iPXE build (snponly.efi drives the NIC through the firmware), or "
            "shimx64.efi for Secure Boot (Debian's signed shim -> signed GRUB over TFTP; docs/hardware.md)"),
    # Site services (docs/services.md): layerboot configures the server's rsyslog, chrony and dnsmasq.
    Setting("services.address", _str, "",
            "address nodes reach the site services (syslog, time, DNS) at; empty: pxe.interface's IPv4 address, "
            "else server.public_url's host"),
    Setting("services.networks", _str_list, (),
            "networks (CIDR) whose nodes may ask for time; empty: pxe.interface's subnet"),
    Setting("services.root", _path, Path("/"),
            "where 'layerboot services apply' writes the daemons' drop-in files (/etc/... below it)"),
    Setting("services.refresh_interval", _int, 5,
            "seconds between two checks by layerbootd of the registry and DHCP leases, to update the DNS hosts "
            "file and the syslog node table when nodes change (0: never)"),
    Setting("services.syslog.enabled", _bool, False,
            "receive nodes' logs with rsyslog; 'layerboot pxe' hands out the log server (DHCP option 7)"),
    Setting("services.syslog.dir", _path, Path("/var/log/layerboot"),
            "where nodes' logs go: DIR/NODE/TAG.log, DIR/NODE/layerboot/COMPONENT.log, DIR/NODE/untagged.log"),
    Setting("services.syslog.tcp_port", _port, 514, "TCP syslog port (RFC 6587 framing; 0: off)"),
    Setting("services.syslog.udp_port", _port, 514,
            "UDP syslog port (stage1's boot messages, plain syslog senders; 0: off)"),
    Setting("services.syslog.relp_port", _port, 2514,
            "RELP port (acknowledged delivery), when the Debian package rsyslog-relp is installed (0: off)"),
    Setting("services.syslog.node_protocol", _choice("tcp", "relp"), "tcp",
            "how nodes forward their logs: 'tcp', or 'relp' (needs rsyslog-relp on server and nodes)"),
    Setting("services.syslog.node_queue", _str, "256m",
            "most disk a node's forwarding queue may use while the server is away (rsyslog size, e.g. 256m)"),
    Setting("services.syslog.node_spool", _path, Path("/var/spool/rsyslog"),
            "where a node's forwarding queue spills while the server is away (on a diskless node: RAM; a "
            "directory on a data disk keeps it across reboots)"),
    Setting("services.syslog.unregistered", _choice("keep", "drop"), "keep",
            "messages from addresses that are no registered node: keep them in DIR/unregistered/ADDRESS/, or drop"),
    Setting("services.syslog.pid_file", _str, "",
            "rsyslogd's pid file, where it does not run under systemd (rsyslog.service is asked otherwise)"),
    Setting("services.time.enabled", _bool, False,
            "serve time with chrony to services.networks; 'layerboot pxe' hands out the NTP server (option 42)"),
    Setting("services.time.upstream", _str_list, (),
            "extra NTP servers or pools (host names or addresses) the boot server itself follows"),
    Setting("services.time.local_stratum", _int, 10,
            "stratum served while the server has no upstream (an isolated boot network); 0: serve only a "
            "synchronised clock"),
    Setting("services.time.pid_file", _str, "/run/chrony/chronyd.pid", "chronyd's pid file"),
    Setting("services.dns.enabled", _bool, False,
            "answer DNS for every node with dnsmasq; 'layerboot pxe' hands out the DNS server and domain"),
    Setting("services.dns.domain", _str, "cluster.internal", "DNS domain of the nodes (NAME.DOMAIN)"),
    Setting("services.dns.upstream", _str_list, (),
            "DNS servers for every other name; empty: the server's /etc/resolv.conf"),
    Setting("services.dns.pid_file", _str, "/run/dnsmasq/dnsmasq.pid",
            "the DNS dnsmasq's pid file (Debian's dnsmasq.service writes this one)"),
)

Config = dataclasses.make_dataclass(
    "Config",
    [(s.field, Any, dataclasses.field(default=s.default)) for s in SETTINGS],
    frozen=True,
    namespace={"__doc__": "Effective layerboot configuration; one field per entry of SETTINGS ('.' -> '_')."},
)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    structured = {s.key for s in SETTINGS if s.render is not None}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in structured:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def parse_settings(table: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Validate a TOML table against SETTINGS; return {field: value}. Errors name the source and key path."""
    known = {s.key: s for s in SETTINGS}
    values: dict[str, Any] = {}
    for key, raw in _flatten(table).items():
        setting = known.get(key)
        if setting is None:
            raise LayerbootError(f"{source}: unknown setting {key!r}",
                                 hint="known settings: " + ", ".join(sorted(known)))
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as err:
            below = getattr(err, "path", "")
            raise LayerbootError(f"{source}: {key}{'.' + below if below else ''}: {err}") from None
    return values


def load_config(path: Path | None = None, *, overrides: dict[str, Any] | None = None) -> Any:
    """Load the TOML config (explicit path, $LAYERBOOT_CONFIG, or /etc/layerboot/layerboot.toml if present)."""
    explicit = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    candidate = explicit or DEFAULT_CONFIG_FILE
    values: dict[str, Any] = {}
    if candidate.exists():
        try:
            table = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise LayerbootError(f"{candidate}: not valid TOML: {err}") from None
        except ValueError as err:   # tomllib lets Python's int-digit limit through (a 5000-digit number)
            raise LayerbootError(f"{candidate}: not valid TOML: {str(err).split(';')[0]}") from None
        except OSError as err:
            raise LayerbootError(f"cannot read config {candidate}: {err.strerror}") from None
        values = parse_settings(table, source=str(candidate))
    elif explicit is not None:
        raise LayerbootError(f"config file {explicit} does not exist")
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def _toml_string(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_as_toml(config: Any) -> str:
    """Render a Config back to TOML (the round trip is tested)."""
    sections: dict[str, list[str]] = {}
    tables: list[str] = []
    for setting in SETTINGS:
        section, name = setting.key.rsplit(".", 1)
        value = getattr(config, setting.field)
        if setting.render is not None:
            tables.append(setting.render(value))
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, tuple):
            text = "[" + ", ".join(_toml_string(v) for v in value) + "]"
        else:
            text = _toml_string(value)
        sections.setdefault(section, []).append(f"{name} = {text}")
    return "\n".join([*(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items()),
                      *tables])


def settings_reference() -> str:
    """Markdown table of every setting, for docs/config.md."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        shown = list(s.default) if isinstance(s.default, tuple) else s.default
        default = s.shown or f"`{shown}`"
        rows.append(f"| `{s.key}` | {default} | {s.help} |")
    return "\n".join(rows) + "\n"
