"""What `layerboot pxe` serves: the network plan, the TFTP root with Debian's iPXE binaries, the chain script.

A PXE ROM first gets an iPXE binary over TFTP (BIOS: undionly.kpxe, UEFI: snponly.efi or ipxe.efi). iPXE then
asks DHCP again, this time sending user class "iPXE" (and option 175), and is pointed at layerbootd's per-MAC
script ``http://HOST:PORT/boot/${netX/mac}.ipxe`` — the URL itself in full-DHCP mode, or a small TFTP-served
chain script in proxy mode, where the boot file has to be a file on our TFTP server. iPXE expands
``${netX/mac}`` itself (the MAC of the NIC it booted from: ``net0`` would be the first NIC even when
another one booted), so one config serves every node. This module has no daemon in it; server/dnsmasq.py
turns a :class:`PxePlan` into a dnsmasq config and keeps dnsmasq running.
"""

from __future__ import annotations

from collections.abc import Callable
import ipaddress
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from layerboot.atomic import write_text
from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run

IPXE_DIR = Path("/usr/lib/ipxe")
BIOS_BINARY = "undionly.kpxe"
EFI_BINARIES = ("snponly.efi", "ipxe.efi", "shimx64.efi")   # shimx64.efi: the Secure Boot chain (below)
CHAIN_SCRIPT = "layerboot.ipxe"
MAC_PATH = "/boot/${netX/mac}.ipxe"


@dataclass(frozen=True)
class PxePlan:
    """Everything dnsmasq needs to know; built and checked once by :func:`plan`."""

    interface: str
    network: ipaddress.IPv4Network      # the interface's subnet (proxy-DHCP answers for it)
    address: ipaddress.IPv4Address      # our address on it (the TFTP server nodes are told about)
    server_url: str                     # layerbootd's base URL, e.g. http://10.0.0.1:8080
    tftp_root: Path
    state_dir: Path                     # generated config and the lease file
    proxy: bool
    range_start: ipaddress.IPv4Address | None = None
    range_end: ipaddress.IPv4Address | None = None
    efi_binary: str = "snponly.efi"
    lease_time: str = "1h"
    dhcp_options: tuple[str, ...] = ()  # extra dnsmasq dhcp-option= values (the site services: log, NTP, DNS)

    @property
    def boot_url(self) -> str:
        """The per-MAC script URL as iPXE sees it (iPXE expands ${netX/mac})."""
        return self.server_url + MAC_PATH

    @property
    def config_file(self) -> Path:
        return self.state_dir / "dnsmasq.conf"

    @property
    def lease_file(self) -> Path:
        return self.state_dir / "dnsmasq.leases"


def check_server_url(url: str) -> str:
    """layerbootd's base URL: http(s)://host[:port] with no path, query or fragment."""
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018 - urllib checks the port only when it is read
    except ValueError as err:
        raise LayerbootError(f"--server-url {url!r} is not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LayerbootError(f"--server-url {url!r} is not an http:// URL with a host",
                             hint="give layerbootd's address as seen by the nodes, e.g. http://10.0.0.1:8080")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise LayerbootError(f"--server-url {url!r} must not have a path, query or fragment",
                             hint="nodes fetch <server-url>/boot/<mac>.ipxe")
    if any(c in url for c in ' ,"\n'):
        raise LayerbootError(f"--server-url {url!r} contains a space, comma or quote")
    from layerboot.overlays.cmdline import check_ipxe_word
    return check_ipxe_word(url.rstrip("/"), "--server-url")     # it goes into the chain script


def interface_address(interface: str) -> ipaddress.IPv4Interface:
    """The first IPv4 address (with prefix) of a network interface, read with `ip -j addr`."""
    require_tool("ip", package="iproute2")
    result = run(["ip", "-j", "-4", "addr", "show", "dev", interface], check=False)
    if result.returncode != 0:
        raise LayerbootError(f"no network interface {interface!r}", hint="see 'ip link' for the interface names")
    for link in json.loads(result.text or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
    raise LayerbootError(f"interface {interface} has no IPv4 address",
                         hint=f"give it the server's address first, e.g. 'ip addr add 10.0.0.1/24 dev {interface}'")


def parse_range(text: str, network: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """``A,B``: the first and last address handed out; both inside the interface's subnet."""
    try:
        first, last = (ipaddress.IPv4Address(part.strip()) for part in text.split(","))
    except ValueError:
        raise LayerbootError(f"--range {text!r} is not two IPv4 addresses 'FIRST,LAST'") from None
    if first not in network or last not in network:
        raise LayerbootError(f"--range {text} is not inside the interface's subnet {network}")
    if first > last:
        raise LayerbootError(f"--range {text}: the first address is above the last")
    return first, last


def plan(*, interface: str, server_url: str, tftp_root: Path, state_dir: Path, dhcp_range: str | None,
         efi_binary: str = "snponly.efi") -> PxePlan:
    """Check the options against the real interface; proxy-DHCP unless a range is given."""
    if efi_binary not in EFI_BINARIES:
        raise LayerbootError(f"--efi-binary must be one of {', '.join(EFI_BINARIES)}")
    url = check_server_url(server_url)
    iface = interface_address(interface)
    first = last = None
    if dhcp_range:
        first, last = parse_range(dhcp_range, iface.network)
        if first <= iface.ip <= last:
            raise LayerbootError(f"--range {dhcp_range} contains the server's own address {iface.ip}")
    return PxePlan(interface=interface, network=iface.network, address=iface.ip, server_url=url,
                   tftp_root=tftp_root, state_dir=state_dir, proxy=dhcp_range is None,
                   range_start=first, range_end=last, efi_binary=efi_binary)


def chain_script(plan: PxePlan) -> str:
    """The TFTP-served iPXE script that hands over to layerbootd (used where the boot file must be a file)."""
    return ("#!ipxe\n"
            "# written by 'layerboot pxe': hand over to layerbootd's script for this node's MAC\n"
            f"chain --autofree {plan.boot_url} || shell\n")


def server_problem(url: str, *, timeout: float = 2.0) -> str | None:
    """Why layerbootd does not answer at ``url`` (None when it does). Nodes would hang at the chain step, so
    `layerboot pxe` warns at start; it still starts, since layerbootd may simply come up later."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None                      # it answered: any HTTP status will do
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return str(reason)


def _readable_by_all(path: Path) -> bool:
    """dnsmasq drops to user nobody before serving TFTP: every directory up to the root must be searchable."""
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & 0o001:
            return False
    return True


def prepare_tftp_root(plan: PxePlan, *, ipxe_dir: Path = IPXE_DIR) -> list[Path]:
    """Copy Debian's iPXE binaries and write the chain script into the TFTP root; returns the files served.

    With ``efi_binary`` shimx64.efi, Debian's signed shim and GRUB network image and grub/grub.cfg too.
    """
    wanted = [BIOS_BINARY, "snponly.efi", "ipxe.efi"]
    missing = [name for name in wanted if not (ipxe_dir / name).is_file()]
    if missing:
        raise LayerbootError(f"iPXE binaries missing from {ipxe_dir}: {', '.join(missing)}",
                             hint="install the Debian package 'ipxe'")
    root = plan.tftp_root
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    if not _readable_by_all(root):
        raise LayerbootError(f"the TFTP root {root} is not reachable by other users (dnsmasq serves as 'nobody')",
                             hint="choose a --tftp-root whose parent directories are world-searchable (o+x)")
    served = []
    for name in wanted:
        target = root / name
        tmp = root / f".{name}.tmp"
        shutil.copyfile(ipxe_dir / name, tmp)   # follows Debian's /boot/ipxe.efi symlink
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        served.append(target)
    script = root / CHAIN_SCRIPT
    write_text(script, chain_script(plan))
    served.append(script)
    if plan.efi_binary == SHIM_BINARY:
        served += install_secure_boot_loaders(root)
    return served


# -- Secure Boot: Debian's signed shim + signed GRUB network image ----------------------------------------
# Found by experiment (docs/hardware.md): shim loads grubx64.efi from the directory it was itself loaded from;
# grubnetx64.efi.signed has the prefix /grub and an embedded config that sources $prefix/x86_64-efi/grub.cfg,
# else $prefix/grub.cfg, from the TFTP server that sent shim. It has no http module (and under Secure Boot GRUB
# loads no module from outside its image), so everything it reads comes over TFTP.
SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB_NET = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")
SHIM_BINARY = "shimx64.efi"
GRUB_BINARY = "grubx64.efi"
GRUB_NODE_DIR = "grub/nodes"
GRUB_OBJECT_DIR = "layerboot"


def grub_main_config() -> str:
    """grub/grub.cfg: hand over to the node's own file, grub/nodes/<mac>.cfg, or say why not and reboot."""
    return ("# written by 'layerboot pxe': Debian's signed GRUB network image reads this over TFTP\n"
            "set timeout=0\n"
            "set node_cfg=$prefix/nodes/${net_default_mac}.cfg\n"
            "source $node_cfg\n"   # returns only when there is no such file ('[ -e ]' is always false over TFTP)
            'echo "layerboot: no boot entry for $net_default_mac ($node_cfg); rebooting in 30 s"\n'
            "sleep 30\n"
            "reboot\n")


def grub_node_config(mac: str, kernel: str, initrd: str, cmdline: str) -> str:
    """grub/nodes/<mac>.cfg: GRUB's 'linux' checks the kernel's signature through shim under Secure Boot."""
    for value, what in ((cmdline, "command line"), (kernel, "kernel path"), (initrd, "initrd path")):
        if any(c in value for c in '$"\'\\;\n') or not value.isprintable():
            raise LayerbootError(f"the {what} {value!r} has characters GRUB would expand or cut")
    return (f"# written by layerboot for {mac}\n"
            f'echo "layerboot: booting {mac}"\n'
            f"linux /{kernel} {cmdline}\n"
            f"initrd /{initrd}\n"
            "boot\n")


def install_secure_boot_loaders(root: Path, *, shim: Path = SHIM, grub: Path = GRUB_NET) -> list[Path]:
    """Copy Debian's signed shim and GRUB network image into the TFTP root and write grub/grub.cfg."""
    missing = [str(p) for p in (shim, grub) if not p.is_file()]
    if missing:
        raise LayerbootError(f"missing {', '.join(missing)}", hint="apt-get install shim-signed grub-efi-amd64-signed")
    served = []
    for source, name in ((shim, SHIM_BINARY), (grub, GRUB_BINARY)):
        tmp = root / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / name)
        served.append(root / name)
    (root / GRUB_NODE_DIR).mkdir(parents=True, exist_ok=True)
    write_text(root / "grub" / "grub.cfg", grub_main_config())
    served.append(root / "grub" / "grub.cfg")
    return served


TOKEN_OPTION = "layerboot.token="


def export_grub_nodes(root: Path, server_url: str, nodes: list[tuple[str, str]], profiles, issue_token,  # noqa: ANN001
                      *, max_age: float, now: float | None = None,
                      node_cmdline: Callable[[str, str], str] | None = None) -> list[str]:
    """Bring grub/nodes/<mac>.cfg in line with the registered nodes; returns one line per change.

    Each entry boots the node's profile's current kernel and initrd (copied once, by digest, under layerboot/)
    with its command line (``node_cmdline(mac, profile_cmdline)`` when given: a named node's kernel args and
    network, server/fleet/netargs.py fleet_cmdline, the same words as its iPXE script) plus BOOTIF=, layerboot.server=, layerboot.node=, layerboot.profile= and a boot token. The GRUB path cannot ask
    layerbootd (no HTTP in Debian's signed GRUB), so the entry is written ahead; its token is readable over TFTP
    as /boot/<mac>.ipxe hands one out over HTTP (the MAC is the identity on a PXE network). An entry is rewritten,
    with a new token, only when what it boots changed or it is older than ``max_age`` seconds (so its token,
    valid for server.boot_token_ttl after it was minted, never runs out unused); entries of nodes that are no
    longer registered are removed.
    """
    import time

    now = time.time() if now is None else now
    changes = []
    objects, entries = root / GRUB_OBJECT_DIR, root / GRUB_NODE_DIR
    objects.mkdir(parents=True, exist_ok=True)
    entries.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for mac, profile in nodes:
        wanted.add(f"{mac}.cfg")
        gen = profiles.current(profile)
        if not gen.kernel or not gen.initrd:
            changes.append(f"{mac}: profile {profile} has no kernel or initrd; no GRUB entry")
            continue
        for digest in (gen.kernel, gen.initrd):
            target = objects / digest
            if not target.exists():
                tmp = objects / f".{digest}.tmp"
                shutil.copyfile(profiles.store.path(digest), tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
        bootif = "BOOTIF=01-" + mac.replace(":", "-")   # the NIC this entry is for (GRUB booted from it)
        base = node_cmdline(mac, gen.cmdline) if node_cmdline is not None else gen.cmdline
        cmdline = " ".join(part for part in (base.strip(), bootif, f"layerboot.server={server_url}",
                                             f"layerboot.node={mac}", f"layerboot.profile={profile}") if part)
        path = entries / f"{mac}.cfg"
        old = _without_token(path.read_text()) if path.exists() else None
        entry = grub_node_config(mac, f"{GRUB_OBJECT_DIR}/{gen.kernel}", f"{GRUB_OBJECT_DIR}/{gen.initrd}",
                                 f"{cmdline} {TOKEN_OPTION}TOKEN")
        if old == entry and now - path.stat().st_mtime < max_age:
            continue
        write_text(path, entry.replace(f"{TOKEN_OPTION}TOKEN", TOKEN_OPTION + issue_token(mac)))
        changes.append(f"{mac}: profile {profile} generation {gen.number}")
    for path in entries.glob("*.cfg"):
        if path.name not in wanted:
            path.unlink()
            changes.append(f"{path.stem}: no longer registered; entry removed")
    return changes


def _without_token(text: str) -> str:
    """An entry with its token replaced by TOKEN, to compare what it boots."""
    head, sep, tail = text.partition(TOKEN_OPTION)
    return head + sep + "TOKEN" + tail[len(tail.split(None, 1)[0]):] if sep and tail.strip() else text
