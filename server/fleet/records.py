"""The fleet's typed records: a node's interfaces, the defaults groups and clusters carry, nodes and groups.

A **node** (:class:`FleetNode`) has a name (its host name), interfaces, a cluster, groups (in order) and the same
settings a group or cluster may carry (:class:`Defaults`). Its *effective* configuration
(:func:`effective`) is its cluster's defaults, overridden by each of its groups' in order, overridden by its
own. Per field:

* ``profile``, ``domain``: the last one set wins (a node's own value overrides its groups', which override its
  cluster's); ``dns``, ``ntp``, ``syslog``: the same, as whole lists (an empty list set on purpose means none);
* ``kernel_args``: concatenated (cluster, groups, node; the kernel takes the last of a repeated option);
* ``vars``: merged, later keys win; ``authorized_keys``: the union;
* ``interfaces``: a group's or cluster's interface named like one of the node's (``eth0``) fills the fields
  the node leaves empty (a gateway, an MTU, ``dhcp``); it never adds an interface.

Everything is checked when a record is made, so a stored record is always valid; the JSON forms (``to_dict``
/ ``from_dict``) are what the database, ``--json``, TOML import/export and the console's API carry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.overlays.cmdline import check_cmdline
from layerboot.overlays.names import check_profile_name
from layerboot.safetext import printable

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")             # one DNS label (RFC 1123), fullmatch
SET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")                         # group and cluster names
DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")                 # Linux: 15 characters
VAR_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
DOMAIN_RE = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAC_LIKE = re.compile(r"[0-9a-f]{12}|[0-9a-f]{2}([:-][0-9a-f]{2}){5}")
MACHINE_ID_RE = re.compile(r"[0-9a-f]{32}")
SERVER = "server"              # in dns/ntp/syslog: layerbootd's own address as nodes reach it
MAX_VALUE = 4096               # characters of a var's value
MAX_LIST = 16                  # servers in dns/ntp/syslog, interfaces of a node, groups of a node
NETWORK_KEYS = ("ip", "ifname", "vlan", "bond", "nameserver", "BOOTIF", "bootdev", "rd.bootif")
BOND_OPTION_RE = re.compile(r"[a-z_]+=[A-Za-z0-9_.:;-]+")


class RecordError(LayerbootError):
    """A field that does not pass; the message names the record and the field."""


def check_name(name: Any, what: str = "node name") -> str:
    """A node name: its host name, one DNS label, lowercase; not something the CLI would read as a MAC."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or MAC_LIKE.fullmatch(name):
        raise RecordError(f"{what} {printable(str(name)[:70])!r} is not a host name",
                          hint="1-63 lowercase letters, digits and '-', not starting or ending with '-' (and not a "
                               "MAC address)")
    return name


def check_set_name(name: Any, kind: str) -> str:
    if not isinstance(name, str) or not SET_RE.fullmatch(name) or ".." in name:
        raise RecordError(f"{kind} name {printable(str(name)[:70])!r} is not valid",
                          hint="1-63 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit")
    return name


def _mac(value: Any, what: str) -> str:
    from layerboot.server.nodes import normalize_mac
    if not isinstance(value, str):
        raise RecordError(f"{what}: a MAC address is a string")
    return normalize_mac(value)


def _text(value: Any, what: str, *, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit or not all(" " <= c <= "~" for c in value):
        raise RecordError(f"{what} must be printable ASCII of at most {limit} characters")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or low <= value <= high):
        raise RecordError(f"{what} must be 0 (none) or a whole number from {low} to {high}, not {value!r}")
    return value


def _address(value: str, what: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise RecordError(f"{what} {printable(value[:60])!r} is not an IPv{version} address") from None
    if address.version != version:
        raise RecordError(f"{what} {value} is not an IPv{version} address")
    return str(address)


def parse_interface_address(value: str, version: int, what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """``ADDRESS/PREFIX`` of one host (not the network or broadcast address of its subnet)."""
    if "/" not in value:
        raise RecordError(f"{what} {printable(value[:60])!r} needs a prefix length (10.0.0.5/24, fd00::5/64)")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise RecordError(f"{what} {printable(value[:60])!r} is not an IPv{version} address with a prefix") from None
    if iface.version != version:
        raise RecordError(f"{what} {value} is not an IPv{version} address")
    net = iface.network
    if version == 4 and net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise RecordError(f"{what} {value} is the {'network' if iface.ip == net.network_address else 'broadcast'} "
                          f"address of {net}")
    return iface


def check_vars(values: Any, what: str) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise RecordError(f"{what}: vars are a table of name = \"text\"")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or not VAR_RE.fullmatch(key):
            raise RecordError(f"{what}: var name {printable(str(key)[:40])!r} is not valid",
                              hint="lowercase letters, digits and '_', starting with a letter or '_'")
        if not isinstance(value, str) or len(value) > MAX_VALUE or "\0" in value:
            raise RecordError(f"{what}: var {key} must be text of at most {MAX_VALUE} characters")
        out[key] = value
    return dict(sorted(out.items()))


def check_servers(values: Any, what: str) -> tuple[str, ...] | None:
    """dns/ntp/syslog: None (inherit), or a list of IP addresses, host names or the word ``server``."""
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise RecordError(f"{what} is a list of addresses or host names")
    out = []
    for value in values:
        if not isinstance(value, str):
            raise RecordError(f"{what}: {value!r} is not an address or host name")
        try:
            out.append(str(ipaddress.ip_address(value)))
            continue
        except ValueError:
            pass
        if value != SERVER and not DOMAIN_RE.fullmatch(value.lower()):
            raise RecordError(f"{what}: {printable(value[:60])!r} is not an address, a host name or 'server'")
        out.append(value.lower())
    if len(out) > MAX_LIST:
        raise RecordError(f"{what}: at most {MAX_LIST} servers")
    return tuple(dict.fromkeys(out))


def check_authorized_key(line: Any, what: str = "authorized key") -> str:
    """One OpenSSH public key line (``type base64 [comment]``), as it goes into authorized_keys."""
    from layerboot.server.sshkeys import check_public_key
    text = _text(line.strip() if isinstance(line, str) else line, what, limit=16384)
    parts = text.split(None, 2)
    check_public_key(" ".join(parts[:2]), source=what)
    return " ".join(parts)


def check_kernel_args(text: Any, what: str) -> str:
    text = check_cmdline(_text(text, what, limit=1024), what=what)
    for word in text.split():
        if word.partition("=")[0] in NETWORK_KEYS:
            raise RecordError(f"{what}: {word.partition('=')[0]}= is written by layerboot from the interfaces",
                              hint="describe the network with --interface/--ip/--mac (docs/nodes.md)")
    return " ".join(text.split())


# -- interfaces ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interface:
    """One network device of a node: a NIC (with its MAC), or a bond (no MAC; its slaves name it in ``bond``).

    ``ipv4``: ``ADDRESS/PREFIX``, ``dhcp`` or empty; ``ipv6``: ``ADDRESS/PREFIX``, ``dhcp6``, ``auto6`` or empty.
    With ``vlan`` the addresses live on the 802.1Q device ``DEVICE.VLAN`` on top of this one. A slave of a bond
    carries no addresses (the bond does). In a group or cluster an Interface is a default for the node's
    interface of the same name: no MAC and no static address there.
    """

    device: str
    mac: str = ""
    ipv4: str = ""
    gateway: str = ""
    ipv6: str = ""
    gateway6: str = ""
    mtu: int = 0
    vlan: int = 0
    bond: str = ""
    bond_options: str = ""

    def __post_init__(self) -> None:
        what = f"interface {printable(str(self.device))}"
        if not isinstance(self.device, str) or not DEVICE_RE.fullmatch(self.device):
            raise RecordError(f"{what}: device names are 1-15 letters, digits, '_', '.' or '-'")
        if self.mac:
            object.__setattr__(self, "mac", _mac(self.mac, what))
        if self.ipv4 and self.ipv4 != "dhcp":
            object.__setattr__(self, "ipv4", str(parse_interface_address(self.ipv4, 4, f"{what}: ipv4")))
        if self.ipv6 and self.ipv6 not in ("dhcp6", "auto6"):
            object.__setattr__(self, "ipv6", str(parse_interface_address(self.ipv6, 6, f"{what}: ipv6")))
        if self.gateway:
            object.__setattr__(self, "gateway", _address(self.gateway, f"{what}: gateway", 4))
        if self.gateway6:
            object.__setattr__(self, "gateway6", _address(self.gateway6, f"{what}: gateway6", 6))
        _int(self.mtu, f"{what}: mtu", 68, 65535)
        _int(self.vlan, f"{what}: vlan", 1, 4094)
        if self.bond and not DEVICE_RE.fullmatch(str(self.bond)):
            raise RecordError(f"{what}: bond {printable(str(self.bond))!r} is not a device name")
        if self.bond_options:
            options = _text(self.bond_options, f"{what}: bond_options")
            if not all(BOND_OPTION_RE.fullmatch(o) for o in options.split(",")):
                raise RecordError(f"{what}: bond_options is a comma-separated list of NAME=VALUE "
                                  "(mode=active-backup,miimon=100; arp_ip_target=a;b)")
            if self.mac:
                raise RecordError(f"{what}: a bond has no MAC of its own (its slaves have)")
        if self.bond and (self.ipv4 or self.ipv6 or self.vlan or self.bond_options):
            raise RecordError(f"{what} is a slave of {self.bond}: addresses and VLANs go on {self.bond}")
        if self.gateway and self.ipv4 not in ("", "dhcp"):
            net = ipaddress.ip_interface(self.ipv4).network
            if ipaddress.ip_address(self.gateway) not in net:
                raise RecordError(f"{what}: gateway {self.gateway} is not in {net}")

    @property
    def netdev(self) -> str:
        """Where the addresses live: the device, or its VLAN device."""
        return f"{self.device}.{self.vlan}" if self.vlan else self.device

    @property
    def static4(self) -> ipaddress.IPv4Interface | None:
        return ipaddress.IPv4Interface(self.ipv4) if self.ipv4 and self.ipv4 != "dhcp" else None

    @property
    def static6(self) -> ipaddress.IPv6Interface | None:
        return ipaddress.IPv6Interface(self.ipv6) if self.ipv6 and self.ipv6 not in ("dhcp6", "auto6") else None

    def to_dict(self) -> dict[str, Any]:
        """Only what is set (device always): compact JSON and TOML."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name == "device" or getattr(self, f.name) != f.default}

    @classmethod
    def from_dict(cls, data: Any, what: str = "interface") -> "Interface":
        if not isinstance(data, Mapping):
            raise RecordError(f"{what} is a table of device, mac, ipv4, gateway, ipv6, gateway6, mtu, vlan, bond, "
                              "bond_options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"{what}: unknown field {unknown[0]!r}", hint="known: " + ", ".join(sorted(known)))
        if "device" not in data:
            raise RecordError(f"{what} needs a device name (eth0, bond0, ...)")
        for name in ("mtu", "vlan"):
            if isinstance(data.get(name), str) and data[name].isdigit():   # CSV cells
                data = {**data, name: int(data[name])}
        for name in known - {"mtu", "vlan"}:
            if name in data and not isinstance(data[name], str):
                raise RecordError(f"{what}: {name} is text, not {data[name]!r}")
        return cls(**dict(data))

    def filled_from(self, default: "Interface") -> "Interface":
        """This interface with every empty field taken from ``default`` (a group's or cluster's)."""
        values = {f.name: getattr(self, f.name) or getattr(default, f.name) for f in fields(self)}
        if self.bond or self.mac and default.bond_options:   # a slave takes no addresses; a NIC is no bond
            values.update(ipv4=self.ipv4, ipv6=self.ipv6, vlan=self.vlan, gateway=self.gateway,
                          gateway6=self.gateway6, bond_options=self.bond_options)
        return Interface(**values)


def check_default_interface(iface: Interface, owner: str) -> Interface:
    if iface.mac or iface.static4 or iface.static6:
        raise RecordError(f"{owner}: interface {iface.device} is a default for the nodes' interfaces of that name: "
                          "a MAC or a static address belongs to one node")
    return iface


# -- defaults: what a cluster, a group and a node may each set ---------------------------------------------------
@dataclass(frozen=True)
class Defaults:
    profile: str = ""
    kernel_args: str = ""
    domain: str = ""
    dns: tuple[str, ...] | None = None
    ntp: tuple[str, ...] | None = None
    syslog: tuple[str, ...] | None = None
    authorized_keys: tuple[str, ...] = ()
    vars: dict[str, str] = field(default_factory=dict)
    interfaces: tuple[Interface, ...] = ()

    def check(self, owner: str) -> "Defaults":
        """A checked copy (values normalised); ``owner`` names the record in messages."""
        if self.profile:
            check_profile_name(self.profile)
        domain = self.domain.lower().rstrip(".") if isinstance(self.domain, str) else self.domain
        if domain and (not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain) or len(domain) > 200):
            raise RecordError(f"{owner}: domain {printable(str(self.domain)[:60])!r} is not a DNS domain")
        keys = tuple(dict.fromkeys(check_authorized_key(k, f"{owner}: authorized key") for k in self.authorized_keys))
        return replace(self, domain=domain, kernel_args=check_kernel_args(self.kernel_args, f"{owner}: kernel args"),
                       dns=check_servers(self.dns, f"{owner}: dns"), ntp=check_servers(self.ntp, f"{owner}: ntp"),
                       syslog=check_servers(self.syslog, f"{owner}: syslog"), authorized_keys=keys,
                       vars=check_vars(self.vars, owner))

    def to_dict(self) -> dict[str, Any]:
        """What is set: ``dns = []`` (none on purpose) is kept, an unset list is left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "interfaces":
                if value:
                    out[f.name] = [i.to_dict() for i in value]
            elif f.name in ("dns", "ntp", "syslog", "authorized_keys"):
                if value is not None and (value or f.name != "authorized_keys"):
                    out[f.name] = list(value)
            elif value:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], owner: str) -> "Defaults":
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "interfaces":
                if not isinstance(value, list):
                    raise RecordError(f"{owner}: interfaces is a list of tables")
                value = tuple(Interface.from_dict(v, f"{owner}: interface") for v in value)
            elif f.name in ("dns", "ntp", "syslog", "authorized_keys"):
                if not isinstance(value, list):
                    raise RecordError(f"{owner}: {f.name} is a list")
                value = tuple(value)
            elif f.name != "vars" and not isinstance(value, str):
                raise RecordError(f"{owner}: {f.name} is text, not {value!r}")
            values[f.name] = value
        return cls(**values).check(owner)

    FIELDS = ("profile", "kernel_args", "domain", "dns", "ntp", "syslog", "authorized_keys", "vars", "interfaces")


def merge(layers: list[tuple[str, Defaults]]) -> tuple[Defaults, dict[str, str]]:
    """Defaults of (source, defaults) pairs, broadest first, as one; and which source gave each field."""
    result = Defaults()
    source: dict[str, str] = {}
    for origin, d in layers:
        changes: dict[str, Any] = {}
        for name in ("profile", "domain"):
            if getattr(d, name):
                changes[name], source[name] = getattr(d, name), origin
        for name in ("dns", "ntp", "syslog"):
            if getattr(d, name) is not None:
                changes[name], source[name] = getattr(d, name), origin
        if d.kernel_args:
            changes["kernel_args"] = f"{result.kernel_args} {d.kernel_args}".strip()
            source["kernel_args"] = ", ".join(filter(None, (source.get("kernel_args"), origin)))
        if d.authorized_keys:
            changes["authorized_keys"] = tuple(dict.fromkeys(result.authorized_keys + d.authorized_keys))
        if d.vars:
            changes["vars"] = {**result.vars, **d.vars}
            source.update({f"vars.{k}": origin for k in d.vars})
        if changes:
            result = replace(result, **changes)
    return result, source


# -- nodes and groups ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetNode:
    """A named node. ``mac`` is its key: the MAC of its first interface that has one (what it PXE-boots from,
    what boot tokens and the other tables name). ``own`` holds what the node sets itself."""

    name: str
    mac: str
    cluster: str = ""
    groups: tuple[str, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    own: Defaults = field(default_factory=Defaults)
    machine_id: str = ""
    asset_key: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        what = f"node {self.name}"
        if self.cluster:
            check_set_name(self.cluster, "cluster")
        for group in self.groups:
            check_set_name(group, "group")
        if len(set(self.groups)) != len(self.groups) or len(self.groups) > MAX_LIST:
            raise RecordError(f"{what}: a group is listed twice, or more than {MAX_LIST} groups")
        if self.machine_id and not MACHINE_ID_RE.fullmatch(self.machine_id):
            raise RecordError(f"{what}: machine_id is 32 lowercase hex digits")
        check_interfaces(self.interfaces, what)
        macs = [i.mac for i in self.interfaces if i.mac]
        if macs and macs[0] != self.mac:
            raise RecordError(f"{what}: its key MAC {self.mac} must be the MAC of its first NIC ({macs[0]})")

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(i.mac for i in self.interfaces if i.mac)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "mac": self.mac}
        if self.cluster:
            data["cluster"] = self.cluster
        if self.groups:
            data["groups"] = list(self.groups)
        data.update({k: v for k, v in self.own.to_dict().items() if k != "interfaces"})
        data["interfaces"] = [i.to_dict() for i in self.interfaces]
        if self.machine_id:
            data["machine_id"] = self.machine_id
        if self.asset_key:
            data["asset_key"] = self.asset_key
        return data

    def config_dict(self) -> dict[str, Any]:
        """What the database's ``nodes.config`` column keeps (the rest has columns of its own)."""
        data = self.own.to_dict()
        data["interfaces"] = [i.to_dict() for i in self.interfaces]
        data["groups"] = list(self.groups)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, name: str | None = None) -> "FleetNode":
        if not isinstance(data, Mapping):
            raise RecordError("a node is a table of name, interfaces, cluster, groups, profile, ...")
        name = name or data.get("name")
        what = f"node {printable(str(name))}"
        known = {"name", "mac", "cluster", "groups", "machine_id", "asset_key", *Defaults.FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"{what}: unknown field {unknown[0]!r}", hint="known: " + ", ".join(sorted(known)))
        if not isinstance(data.get("interfaces", []), list):
            raise RecordError(f"{what}: interfaces is a list of tables")
        interfaces = tuple(Interface.from_dict(i, f"{what}: interface") for i in data.get("interfaces", []))
        own = Defaults.from_dict({k: v for k, v in data.items() if k in Defaults.FIELDS and k != "interfaces"}, what)
        groups = data.get("groups", [])
        if not isinstance(groups, list):
            raise RecordError(f"{what}: groups is a list of group names")
        macs = [i.mac for i in interfaces if i.mac]
        mac = data.get("mac") or (macs[0] if macs else "")
        if not mac:
            raise RecordError(f"{what} has no interface with a MAC", hint="give it one: --mac 52:54:00:...")
        asset_key = data.get("asset_key") or None
        if asset_key is not None:
            from layerboot.server.nodes import normalize_asset_key
            asset_key = normalize_asset_key(_text(asset_key, f"{what}: asset_key"))
        return cls(name=check_name(name), mac=_mac(mac, what), cluster=data.get("cluster", "") or "",
                   groups=tuple(groups), interfaces=interfaces, own=own,
                   machine_id=data.get("machine_id", "") or "", asset_key=asset_key)


def check_interfaces(interfaces: tuple[Interface, ...], what: str) -> None:
    """Interfaces of one node: unique devices and MACs, bonds that exist and have slaves, a MAC somewhere."""
    if len(interfaces) > MAX_LIST:
        raise RecordError(f"{what}: at most {MAX_LIST} interfaces")
    devices = [i.device for i in interfaces]
    netdevs = [i.netdev for i in interfaces]
    if len(set(devices)) != len(devices) or len(set(netdevs)) != len(netdevs):
        raise RecordError(f"{what}: two interfaces share a device name")
    macs = [i.mac for i in interfaces if i.mac]
    if len(set(macs)) != len(macs):
        raise RecordError(f"{what}: two interfaces share a MAC")
    if interfaces and not macs:
        raise RecordError(f"{what}: no interface has a MAC (the node PXE-boots from one)")
    by_device = {i.device: i for i in interfaces}
    for iface in interfaces:
        if iface.bond:
            bond = by_device.get(iface.bond)
            if bond is None or bond.mac:
                raise RecordError(f"{what}: {iface.device} is a slave of {iface.bond}, which is not a bond of this "
                                  "node (a bond is an interface without a MAC)")
        elif not iface.mac and not any(i.bond == iface.device for i in interfaces):
            raise RecordError(f"{what}: {iface.device} has no MAC and no slaves (a bond needs NICs with "
                              f"bond = \"{iface.device}\")")


@dataclass(frozen=True)
class Group:
    """A group (``kind`` "group") or a cluster (``kind`` "cluster"): a name, a description and defaults."""

    name: str
    kind: str = "group"
    description: str = ""
    defaults: Defaults = field(default_factory=Defaults)

    def __post_init__(self) -> None:
        if self.kind not in ("group", "cluster"):
            raise RecordError(f"{self.kind!r} is neither a group nor a cluster")
        check_set_name(self.name, self.kind)
        _text(self.description, f"{self.kind} {self.name}: description", limit=500)
        for iface in self.defaults.interfaces:
            check_default_interface(iface, f"{self.kind} {self.name}")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.description:
            data["description"] = self.description
        return data | self.defaults.to_dict()

    @classmethod
    def from_dict(cls, data: Any, *, kind: str, name: str | None = None) -> "Group":
        if not isinstance(data, Mapping):
            raise RecordError(f"a {kind} is a table of description, profile, kernel_args, ...")
        name = name or data.get("name")
        owner = f"{kind} {printable(str(name))}"
        known = {"name", "kind", "description", *Defaults.FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"{owner}: unknown field {unknown[0]!r}", hint="known: " + ", ".join(sorted(known)))
        if data.get("kind", kind) != kind:
            raise RecordError(f"{owner}: kind {data.get('kind')!r} in a list of {kind}s")
        defaults = Defaults.from_dict({k: v for k, v in data.items() if k in Defaults.FIELDS}, owner)
        return cls(name=check_set_name(name, kind), kind=kind, description=data.get("description", "") or "",
                   defaults=defaults)


@dataclass(frozen=True)
class Effective:
    """A node as it boots: its record with its cluster's and groups' defaults applied (see the module doc)."""

    node: FleetNode
    settings: Defaults
    interfaces: tuple[Interface, ...]
    sources: dict[str, str]

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def profile(self) -> str:
        return self.settings.profile

    def to_dict(self) -> dict[str, Any]:
        data = self.node.to_dict()
        data.update({k: v for k, v in self.settings.to_dict().items() if k != "interfaces"})
        data["interfaces"] = [i.to_dict() for i in self.interfaces]
        data["sources"] = dict(sorted(self.sources.items()))
        return data


def effective(node: FleetNode, groups: Mapping[tuple[str, str], Group], base: Defaults | None = None) -> Effective:
    """``node`` with the defaults of its cluster and groups (``groups`` maps (kind, name) to records; a
    missing one is an error naming it); ``base``: the fleet-wide defaults below them all (the ``fleet.*``
    settings: DNS, NTP and log servers, domain)."""
    layers: list[tuple[str, Defaults]] = [("fleet settings", base)] if base is not None else []
    if node.cluster:
        layers.append((f"cluster {node.cluster}", _need(groups, "cluster", node.cluster, node.name).defaults))
    for name in node.groups:
        layers.append((f"group {name}", _need(groups, "group", name, node.name).defaults))
    layers.append(("node", node.own))
    settings, sources = merge(layers)
    interfaces = []
    for iface in node.interfaces:
        for _origin, d in reversed(layers[:-1]):         # the nearest default first
            default = next((i for i in d.interfaces if i.device == iface.device), None)
            if default is not None:
                iface = iface.filled_from(default)
        interfaces.append(iface)
    return Effective(node, settings, tuple(interfaces), sources)


def fleet_defaults(config: Any) -> Defaults:
    """The ``fleet.*`` settings as the broadest layer of defaults."""
    return Defaults(domain=config.fleet_domain, dns=tuple(config.fleet_dns_servers),
                    ntp=tuple(config.fleet_ntp_servers), syslog=tuple(config.fleet_syslog_servers)).check("fleet settings")


def _need(groups: Mapping[tuple[str, str], Group], kind: str, name: str, node: str) -> Group:
    found = groups.get((kind, name))
    if found is None:
        raise RecordError(f"node {node} is in {kind} {name}, which does not exist",
                          hint=f"layerboot {kind}s add {name}")
    return found
