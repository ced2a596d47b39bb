"""A node's interfaces as kernel command line words in dracut's syntax, which stage1 applies at boot.

What the per-node iPXE script and the node's GRUB entry append to the profile's command line (docs/stage1.md,
"Network"): ``ifname=DEV:MAC`` for each NIC (so names do not depend on probe order), ``bond=`` and ``vlan=``,
one ``ip=`` per address family of each configured device (the boot device's carries the host name),
``nameserver=`` for the node's DNS servers. The words are parsed again with stage1's own parser
(initrd/stage1/netcmd.py) before they are used: a record stage1 would refuse is refused when it is saved.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from layerboot.server.fleet.records import SERVER, Effective, Interface, RecordError

NETWORK_WORDS = ("ip", "ifname", "vlan", "bond", "nameserver", "bootdev")
MAX_NAMESERVERS = 3


def server_host(config: object) -> str:
    """layerbootd's host as nodes reach it: from server.public_url, else pxe.server_url; "" when neither is set."""
    for url in (getattr(config, "server_public_url", ""), getattr(config, "pxe_server_url", "")):
        if url:
            return urlsplit(url).hostname or ""
    return ""


def resolve_servers(values: tuple[str, ...] | None, host: str) -> list[str]:
    """A dns/ntp/syslog list with ``server`` replaced by layerbootd's host (dropped when that is unknown)."""
    out = []
    for value in values or ():
        value = host if value == SERVER else value
        if value and value not in out:
            out.append(value)
    return out


def boot_device(interfaces: tuple[Interface, ...]) -> Interface | None:
    """The device that carries the boot NIC's addresses: the first NIC, or the bond it is a slave of."""
    first = next((i for i in interfaces if i.mac), None)
    if first is not None and first.bond:
        return next((i for i in interfaces if i.device == first.bond), first)
    return first


def _ip_words(iface: Interface, hostname: str, boot: bool) -> list[str]:
    mtu = f":{iface.mtu}" if iface.mtu else ""
    dev = iface.netdev
    dynamic4 = "dhcp" if iface.ipv4 == "dhcp" else ""
    dynamic6 = iface.ipv6 if iface.ipv6 in ("dhcp6", "auto6") else ""
    words = []
    if iface.static4 is not None:
        a = iface.static4
        method = ",".join(filter(None, ("none", dynamic6)))
        words.append(f"ip={a.ip}::{iface.gateway}:{a.network.prefixlen}:{hostname}:{dev}:{method}{mtu}")
        dynamic6 = ""
    if iface.static6 is not None:
        a6 = iface.static6
        method = ",".join(filter(None, ("none", dynamic4)))
        gateway = f"[{iface.gateway6}]" if iface.gateway6 else ""
        words.append(f"ip=[{a6.ip}]::{gateway}:{a6.network.prefixlen}:{hostname}:{dev}:{method}{mtu}")
        dynamic4 = ""
    methods = ",".join(filter(None, (dynamic4, dynamic6)))
    if methods:
        words.append(f"ip=::::{hostname}:{dev}:{methods}{mtu}")
    if not words and boot:                         # an unconfigured boot device: DHCP, as stage1 does anyway
        words.append(f"ip=::::{hostname}:{dev}:dhcp{mtu}")
    return words


def network_args(eff: Effective, *, host: str = "") -> list[str]:
    """The words for ``eff`` (nothing for a node without interfaces); RecordError if stage1 would refuse them."""
    interfaces = eff.interfaces
    if not interfaces:
        return []
    words = [f"ifname={i.device}:{i.mac}" for i in interfaces if i.mac]
    for bond in (i for i in interfaces if not i.mac):
        parts = [bond.device, ",".join(i.device for i in interfaces if i.bond == bond.device)]
        if bond.bond_options or bond.mtu:
            parts.append(bond.bond_options)
        if bond.mtu:
            parts.append(str(bond.mtu))
        words.append("bond=" + ":".join(parts))
    words += [f"vlan={i.netdev}:{i.device}" for i in interfaces if i.vlan]
    boot = boot_device(interfaces)
    for iface in interfaces:
        if not iface.bond:
            is_boot = iface is boot
            words += _ip_words(iface, eff.name if is_boot else "", is_boot)
    dns = [d for d in resolve_servers(eff.settings.dns, host) if is_address(d)]
    words += [f"nameserver={d}" for d in dns[:MAX_NAMESERVERS]]
    check_words(words, eff.name)
    return words


def is_address(text: str) -> bool:
    """An IPv4 or IPv6 address (not a host name)."""
    import ipaddress
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_words(words: list[str], name: str) -> None:
    """Parse the words with stage1's own parser (what the node will run)."""
    from layerboot.initrd.stage1.netcmd import NetOptionError, parse_network

    pairs = [(w.partition("=")[0], w.partition("=")[2]) for w in words]
    try:
        parse_network(pairs)
    except NetOptionError as err:
        raise RecordError(f"node {name}: stage1 would refuse its network: {err}") from None


def without_network_words(cmdline: str) -> str:
    """A profile's command line without the network options a node's own interfaces replace."""
    return " ".join(w for w in cmdline.split() if w.partition("=")[0] not in NETWORK_WORDS)


def node_kernel_args(profile_cmdline: str, eff: Effective, *, host: str = "") -> str:
    """What a node boots with besides layerbootd's own options: the profile's command line (its network words
    dropped when the node has interfaces of its own), the node's kernel args, its network."""
    base = without_network_words(profile_cmdline) if eff.interfaces else profile_cmdline
    return " ".join(filter(None, (base.strip(), eff.settings.kernel_args, *network_args(eff, host=host))))


def fleet_cmdline(fleet, config, mac: str, profile_cmdline: str) -> str:  # noqa: ANN001 - Fleet, Settings
    """The command line the node with NIC ``mac`` boots with (before layerbootd's own options): the profile's,
    or for a named node :func:`node_kernel_args` with its group/cluster defaults. One answer for the per-node
    iPXE script (server/http.py) and the node's GRUB entry (server/pxe.py export_grub_nodes)."""
    from layerboot.server.fleet.records import fleet_defaults

    node = fleet.find(mac) if fleet is not None else None
    if node is None:
        return profile_cmdline
    eff = fleet.effective(node, base=fleet_defaults(config))
    return node_kernel_args(profile_cmdline, eff, host=server_host(config))
