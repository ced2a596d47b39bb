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


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"expected a non-negative integer, got {value}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


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
    Setting("bake.max_bytes", _int, 16 * GiB,
            "largest total unpacked size an upload may expand to (decompression-bomb quota)"),
    Setting("bake.max_files", _int, 2_000_000, "most members an upload may contain"),
    Setting("bake.special_files", _choice("reject", "keep"), "reject",
            "what to do with fifos and sockets in an upload: reject the upload or keep them"),
    Setting("bake.threads", _int, 0, "compressor threads for capture and bake (0: one per core)"),
    Setting("server.listen", _str, "0.0.0.0", "address layerbootd listens on for HTTP"),
    Setting("server.port", _int, 8080, "HTTP port of layerbootd"),
    Setting("server.unknown_mac", _choice("refuse", "default"), "refuse",
            "policy for a MAC that is not registered: refuse it or boot server.default_profile"),
    Setting("server.default_profile", _str, "", "profile served to unknown MACs when the policy is 'default'"),
    Setting("server.ssh_port", _int, 0, "SFTP upload port (0: disabled)"),
    Setting("server.bake_workers", _int, 1, "uploads baked at the same time"),
    Setting("server.queue_size", _int, 64, "uploads that may wait for a bake before new ones are refused"),
    Setting("server.debug", _bool, False, "debug messages in the daemon's log"),
    Setting("server.access_log", _bool, True,
            "log one line per HTTP request (client, method, path, status, bytes, duration; journal fields)"),
    Setting("server.public_url", _str, "",
            "base URL nodes are told to use (e.g. http://10.0.0.1:8080); empty: the Host the request came in on"),
    Setting("server.boot_token_ttl", _int, 30 * 86400,
            "seconds a boot token (minted by /boot/MAC.ipxe, on the node's kernel command line) stays valid "
            "after its last use"),
    Setting("server.upload_policy", _choice("hold", "auto"), "hold",
            "default for profiles without their own policy: 'auto' appends a baked upload as a new generation, "
            "'hold' waits for 'layerboot uploads approve'"),
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
    Setting("pxe.efi_binary", _choice("snponly.efi", "ipxe.efi"), "snponly.efi",
            "iPXE build sent to UEFI PXE ROMs (snponly.efi drives the NIC through the firmware)"),
)

Config = dataclasses.make_dataclass(
    "Config",
    [(s.field, Any, dataclasses.field(default=s.default)) for s in SETTINGS],
    frozen=True,
    namespace={"__doc__": "Effective layerboot configuration; one field per entry of SETTINGS ('.' -> '_')."},
)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
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
            raise LayerbootError(f"{source}: {key}: {err}") from None
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
        except OSError as err:
            raise LayerbootError(f"cannot read config {candidate}: {err.strerror}") from None
        values = parse_settings(table, source=str(candidate))
    elif explicit is not None:
        raise LayerbootError(f"config file {explicit} does not exist")
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def config_as_toml(config: Any) -> str:
    """Render a Config back to TOML (the round trip is tested)."""
    sections: dict[str, list[str]] = {}
    for setting in SETTINGS:
        section, name = setting.key.rsplit(".", 1)
        value = getattr(config, setting.field)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        sections.setdefault(section, []).append(f"{name} = {text}")
    return "\n".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


def settings_reference() -> str:
    """Markdown table of every setting, for docs/config.md."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.key}` | `{s.default}` | {s.help} |")
    return "\n".join(rows) + "\n"
