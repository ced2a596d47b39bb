"""dracut's network options on the kernel command line (``man dracut.cmdline``, "Network") → a :class:`NetPlan`.

The contract for admins and for layerbootd's per-node iPXE script is dracut's documented syntax: ``ip=`` in all
its forms (IPv6 addresses in brackets), ``ifname=``, ``vlan=``, ``bond=``, ``nameserver=``, ``rd.route=``,
``BOOTIF=``, ``bootdev=``, ``rd.bootif=``, ``rd.peerdns=``, ``rd.neednet=``, ``rd.net.timeout.*`` and
``rd.net.dhcp.retry=``. What stage1 cannot do (``bridge=``, ``team=``, ``ip=ibft``, ...) is refused with one line
rather than ignored. Several ``ip=`` for one interface are merged when they configure different address
families (one IPv4 and one IPv6 setting, as NetworkManager's dracut module allows). docs/stage1.md lists it all.

Parsing only: nothing here touches the system. Addresses are checked with ``_socket.inet_pton``.
"""

from __future__ import annotations

from .record import Record

# dracut's autoconf words → stage1's methods. "static" is none/off; the address decides its family.
METHODS = {"none": "static", "off": "static", "dhcp": "dhcp", "on": "dhcp", "any": "dhcp", "dhcp6": "dhcp6",
           "auto6": "auto6", "either6": "either6", "link6": "link6"}
V6_METHODS = ("dhcp6", "auto6", "either6", "link6")
REFUSED_METHODS = {
    "ibft": "iBFT (iSCSI boot firmware tables) is not read by layerboot's stage1",
    "bootp": "BOOTP is not supported (use dhcp)", "rarp": "RARP is not supported (use dhcp)",
    "both": "BOOTP/RARP are not supported (use dhcp)",
    "single-dhcp": "DHCP on every interface in parallel is not supported: pass BOOTIF= (the PXE MAC) or name "
                   "the interface (ip=IFACE:dhcp)",
}
REFUSED_KEYS = {
    "bridge": "bridges are not set up by layerboot's stage1 (bond= and vlan= are)",
    "team": "teaming is not supported by layerboot's stage1 (use bond=, which has active-backup and 802.3ad)",
    "ibft": "iBFT is not read by layerboot's stage1", "rd.iscsi.ibft": "iBFT is not read by layerboot's stage1",
}
TIMEOUTS = ("iflink", "carrier", "ifup", "dhcp", "ipv6dad", "ipv6auto")
BOND_MODES = {"0": "balance-rr", "1": "active-backup", "2": "balance-xor", "3": "broadcast", "4": "802.3ad",
              "5": "balance-tlb", "6": "balance-alb"}
BOND_OPTIONS = ("mode", "miimon", "updelay", "downdelay", "peer_notif_delay", "use_carrier", "lacp_rate",
                "xmit_hash_policy", "ad_select", "ad_actor_sys_prio", "ad_actor_system", "ad_user_port_key",
                "min_links", "primary", "primary_reselect", "fail_over_mac", "arp_interval", "arp_ip_target",
                "arp_validate", "arp_all_targets", "num_grat_arp", "num_unsol_na", "all_slaves_active",
                "resend_igmp", "packets_per_slave", "tlb_dynamic_lb", "lp_interval")


class NetOptionError(ValueError):
    """A network option stage1 refuses; the message is the one line the operator sees."""


class IfaceConfig(Record):
    """Everything ``ip=`` said about one interface ("" = the boot interface), IPv4 and IPv6 merged."""

    device: str = ""
    v4: str = ""                      # "" (not configured), "static" or "dhcp"
    v6: str = ""                      # "", "static", "dhcp6", "auto6", "either6" or "link6"
    address4: str = ""
    prefix4: int = 0
    gateway4: str = ""
    address6: str = ""
    prefix6: int = 0
    gateway6: str = ""
    hostname: str = ""
    mtu: int = 0
    mac: str = ""
    dns: tuple[str, ...] = ()
    text: str = ""                    # the ip= value(s), for messages


class Vlan(Record):
    name: str
    parent: str
    vid: int


class Bond(Record):
    name: str
    slaves: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()   # (name, value) in order; arp_ip_target values joined by ","
    mtu: int = 0

    @property
    def mode(self) -> str:
        for key, value in self.options:
            if key == "mode":
                return BOND_MODES.get(value, value)
        return "balance-rr"


class Route(Record):
    destination: str                  # address/prefix
    gateway: str
    device: str = ""


class NetPlan(Record):
    configs: tuple[IfaceConfig, ...] = ()
    vlans: tuple[Vlan, ...] = ()
    bonds: tuple[Bond, ...] = ()
    names: tuple[tuple[str, str], ...] = ()      # ifname=: (name, mac)
    routes: tuple[Route, ...] = ()
    nameservers: tuple[str, ...] = ()
    bootif: str = ""                  # BOOTIF= as a MAC (lower case, colons); "" with rd.bootif=0
    bootdev: str = ""
    peerdns: bool = True
    neednet: bool = False
    dhcp_retry: int = 1
    timeouts: tuple[tuple[str, float], ...] = ()  # rd.net.timeout.NAME=SECONDS given on the command line

    def timeout(self, name: str, default: float) -> float:
        return dict(self.timeouts).get(name, default)

    def config_for(self, device: str) -> IfaceConfig | None:
        for config in self.configs:
            if config.device == device:
                return config
        return None


NETWORK_KEYS = ("ip", "ifname", "vlan", "bond", "nameserver", "rd.route", "BOOTIF", "bootdev", "rd.bootif",
                "rd.peerdns", "rd.neednet", "rd.net.dhcp.retry", *REFUSED_KEYS)


def is_network_key(key: str) -> bool:
    return key in NETWORK_KEYS or key.startswith("rd.net.")


# -- small validators ----------------------------------------------------------------------------------------
def _inet(family_name: str, text: str) -> str:
    """The canonical form of an IPv4 ("4") or IPv6 ("6") address; "" when ``text`` is not one."""
    import _socket

    family = _socket.AF_INET if family_name == "4" else _socket.AF_INET6
    try:
        return _socket.inet_ntop(family, _socket.inet_pton(family, text))
    except (OSError, ValueError):
        return ""


def address_family(text: str) -> str:
    """"4" or "6" for a valid address (brackets allowed around IPv6), "" otherwise."""
    text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if _inet("4", text):
        return "4"
    return "6" if _inet("6", text) else ""


def canonical(text: str) -> str:
    text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    return _inet("4", text) or _inet("6", text)


def _address(what: str, text: str, family: str = "") -> str:
    value = canonical(text)
    if not value or (family and address_family(value) != family):
        kind = {"4": "an IPv4 address", "6": "an IPv6 address"}.get(family, "an IP address")
        raise NetOptionError(f"{what}: {text!r} is not {kind}")
    return value


def _prefix(what: str, text: str, family: str) -> int:
    """A prefix length from ``24`` or a dotted IPv4 netmask ``255.255.255.0``."""
    limit = 32 if family == "4" else 128
    if text.isdigit():
        value = int(text)
        if not 0 < value <= limit:
            raise NetOptionError(f"{what}: prefix length {text} is out of range 1-{limit}")
        return value
    if family == "4" and _inet("4", text):
        import _socket

        bits = int.from_bytes(_socket.inet_aton(text), "big")
        length = 32 - (bits ^ 0xFFFFFFFF).bit_length()
        if bits != (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF or length == 0:
            raise NetOptionError(f"{what}: {text} is not a contiguous netmask")
        return length
    raise NetOptionError(f"{what}: {text!r} is neither a prefix length nor a netmask")


def normalize_mac(what: str, text: str) -> str:
    parts = text.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise NetOptionError(f"{what}: {text!r} is not a MAC address (6 hex pairs)")
    return ":".join(parts)


def _ifname(what: str, name: str) -> str:
    if not name or len(name) > 15 or name in (".", "..") or any(c in "/:," or c.isspace() for c in name):
        raise NetOptionError(f"{what}: {name!r} is not a valid interface name (1-15 characters, no '/', ':', "
                             "',' or spaces)")
    return name


def _mtu(what: str, text: str) -> int:
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise NetOptionError(f"{what}: MTU {text!r} is not a number from 68 to 65535")
    return int(text)


def _hostname(what: str, text: str) -> str:
    labels = text.rstrip(".").split(".")
    ok = len(text) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label) for label in labels)
    if not ok:
        raise NetOptionError(f"{what}: {text!r} is not a valid host name")
    return text.rstrip(".")


def _seconds(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise NetOptionError(f"{key}={text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise NetOptionError(f"{key}={text!r} must be more than 0 and at most 3600 seconds")
    return value


def _bool(key: str, value: str, bare: bool) -> bool:
    if bare:
        return True
    if value in ("1", "yes", "on", "true"):
        return True
    if value in ("0", "no", "off", "false"):
        return False
    raise NetOptionError(f"{key}={value!r}: use 0 or 1")


# -- ip= -----------------------------------------------------------------------------------------------------
def split_fields(value: str) -> list[str]:
    """Split on ':' like dracut, keeping a bracketed IPv6 address (``[2001:db8::1]``) as one field."""
    fields, i = [], 0
    while True:
        if value.startswith("[", i):
            end = value.find("]", i)
            if end < 0:
                raise NetOptionError(f"{value!r}: '[' without a closing ']'")
            tail = value.find(":", end)   # "[2001:db8::]/48" (rd.route) keeps its prefix length
            tail = len(value) if tail < 0 else tail
            if tail > end + 1 and value[end + 1] != "/":
                raise NetOptionError(f"{value!r}: ']' must be followed by ':' or '/PREFIX'")
            fields.append(value[i:tail])
            i = tail
        else:
            end = value.find(":", i)
            end = len(value) if end < 0 else end
            fields.append(value[i:end])
            i = end
        if i >= len(value):
            return fields
        i += 1


def _methods(what: str, text: str) -> tuple[str, str, bool]:
    """(IPv4 method, IPv6 method, static?) from dracut's autoconf word(s): ``dhcp``, ``dhcp,auto6``, ``none``.

    ``none``/``off`` (static) takes the family of the client address, so ``none,auto6`` with an IPv4 address is
    a static IPv4 address plus SLAAC.
    """
    v4 = v6 = ""
    static = False
    for word in (text or "dhcp").split(","):
        if word in REFUSED_METHODS:
            raise NetOptionError(f"{what}: {REFUSED_METHODS[word]}")
        if word not in METHODS:
            raise NetOptionError(f"{what}: unknown autoconf {word!r} (use none, off, dhcp, on, any, dhcp6, auto6, "
                                 "either6 or link6)")
        method = METHODS[word]
        if method == "static":
            clash = static
            static = True
        elif method in V6_METHODS:
            clash, v6 = bool(v6), method
        else:
            clash, v4 = bool(v4), method
        if clash:
            raise NetOptionError(f"{what}: {text!r} names two methods for one address family")
    return v4, v6, static


def _tail_mac(fields: list[str]) -> str:
    """A MAC written after the MTU: one field, or six when its colons were split too (dracut accepts both)."""
    if not fields or fields == [""]:
        return ""
    return ":".join(fields)


def parse_ip(value: str) -> IfaceConfig:
    """One ``ip=`` value → an IfaceConfig for its interface ("" = the boot interface)."""
    what = f"ip={value}"
    fields = split_fields(value)
    if len(fields) == 1:
        if address_family(fields[0]) == "4":
            raise NetOptionError(f"{what}: the anaconda form (ip=ADDRESS netmask=... gateway=...) is not "
                                 "supported; use ip=<client-IP>::<gateway>:<netmask>:<hostname>:<interface>:none")
        v4, v6, static = _methods(what, fields[0])
        if static:
            raise NetOptionError(f"{what}: 'none'/'off' needs a static address "
                                 "(ip=<client-IP>::<gateway>:<netmask>:<hostname>:<interface>:none)")
        return IfaceConfig(v4=v4, v6=v6, text=value)
    second = fields[1].split(",")
    if 2 <= len(fields) <= 9 and fields[1] and all(w in METHODS or w in REFUSED_METHODS for w in second) \
            and not address_family(fields[0]):
        # ip=<interface>:{dhcp|on|any|dhcp6|auto6|either6|link6}[:[<mtu>][:<macaddr>]]
        v4, v6, static = _methods(what, fields[1])
        if static:
            raise NetOptionError(f"{what}: 'none'/'off' needs a static address "
                                 "(ip=<client-IP>::<gateway>:<netmask>:<hostname>:<interface>:none)")
        device = _ifname(what, fields[0]) if fields[0] else ""
        mtu = _mtu(what, fields[2]) if len(fields) > 2 and fields[2] else 0
        mac = _tail_mac(fields[3:])
        return IfaceConfig(device=device, v4=v4, v6=v6, mtu=mtu,
                           mac=normalize_mac(what, mac) if mac else "", text=value)
    if len(fields) < 7:
        raise NetOptionError(f"{what}: expected dhcp|on|any|dhcp6|auto6, <interface>:<method>, or "
                             "<client-IP>:[<peer>]:<gateway>:<netmask>:<hostname>:<interface>:<method>")
    client, _peer, gateway, mask, hostname, device, autoconf = fields[:7]
    rest = fields[7:]
    if client.startswith("[") and client.endswith("]"):
        client = client[1:-1]          # [2001:db8::5/64]
    if autoconf not in METHODS and autoconf not in REFUSED_METHODS and "," not in autoconf or \
            (not autoconf and rest):
        raise NetOptionError(f"{what}: the 7th field must be the method (none, off, dhcp, dhcp6, auto6, ...), "
                             f"not {autoconf!r}; IPv6 addresses go in brackets ([2001:db8::1])")
    v4, v6, static = _methods(what, autoconf)
    config: dict[str, object] = {"device": _ifname(what, device) if device else "", "text": value}
    if hostname:
        config["hostname"] = _hostname(what, hostname)
    if rest and rest[0] and address_family(rest[0]) and ("." in rest[0] or rest[0].startswith("[")):
        if len(rest) > 2:
            raise NetOptionError(f"{what}: at most two DNS servers after the method")
        config["dns"] = tuple(_address(what, d) for d in rest[:2] if d)
    elif rest:
        if rest[0]:
            config["mtu"] = _mtu(what, rest[0])
        mac = _tail_mac(rest[1:])
        if mac:
            config["mac"] = normalize_mac(what, mac)
    if client and not static:
        raise NetOptionError(f"{what}: a client address makes no sense with {autoconf!r} (use none or off)")
    if static and not client:
        raise NetOptionError(f"{what}: {autoconf!r} without a static client address does not make sense")
    if not client and (gateway or mask):
        raise NetOptionError(f"{what}: a gateway or netmask without a static client address does not make sense")
    if client:
        address, slash, length = client.partition("/")
        family = address_family(address)
        if not family:
            raise NetOptionError(f"{what}: {client!r} is not an IP address")
        if slash and mask:
            raise NetOptionError(f"{what}: give the prefix either as {client!r} or as the netmask field, not both")
        if not (slash or mask):
            raise NetOptionError(f"{what}: a static address needs a netmask or prefix length")
        if (v4 if family == "4" else v6):
            raise NetOptionError(f"{what}: {autoconf!r} names two methods for IPv{family}")
        if family == "4":
            v4 = "static"
        else:
            v6 = "static"
        config[f"address{family}"] = canonical(address)
        config[f"prefix{family}"] = _prefix(what, length or mask, family)
        config[f"gateway{family}"] = _address(what, gateway, family) if gateway else ""
    return IfaceConfig(v4=v4, v6=v6, **config)  # type: ignore[arg-type]


def merge(first: IfaceConfig, second: IfaceConfig) -> IfaceConfig:
    """Two ip= for one interface: fine when they set different address families and agree on the rest."""
    name = first.device or "the boot interface"
    what = f"ip={first.text} and ip={second.text}"
    if first.v4 and second.v4 or first.v6 and second.v6:
        family = "IPv4" if first.v4 and second.v4 else "IPv6"
        raise NetOptionError(f"{what} both configure {family} on {name}")
    values = {}
    for field in IfaceConfig._fields:
        a, b = getattr(first, field), getattr(second, field)
        if field == "text":
            values[field] = f"{a} {b}"
        elif field == "dns":
            values[field] = a + tuple(d for d in b if d not in a)
        elif a and b and a != b:
            raise NetOptionError(f"{what} disagree on the {field} of {name} ({a} vs {b})")
        else:
            values[field] = a or b
    return IfaceConfig(**values)


# -- the other options ---------------------------------------------------------------------------------------
def vlan_id(name: str) -> int:
    """dracut's four VLAN naming styles: vlan0005, vlan5, eth0.0005, eth0.5."""
    digits = name[4:] if name.startswith("vlan") else name.rpartition(".")[2] if "." in name else ""
    if not digits.isdigit() or not 1 <= int(digits) <= 4094:
        raise NetOptionError(f"vlan={name}: the VLAN id comes from the name (vlan0005, vlan5, eth0.0005 or eth0.5) "
                             "and must be 1-4094")
    return int(digits)


def parse_vlan(value: str) -> Vlan:
    fields = value.split(":")
    if len(fields) != 2 or not all(fields):
        raise NetOptionError(f"vlan={value}: expected vlan=<vlanname>:<phys_device>")
    name, parent = (_ifname(f"vlan={value}", f) for f in fields)
    return Vlan(name, parent, vlan_id(name))


def parse_bond(value: str | None) -> Bond:
    """bond=<name>[:<slaves>[:<options>[:<mtu>]]]; a bare ``bond`` is bond0 over eth0,eth1 in balance-rr."""
    what = f"bond={value}" if value is not None else "bond"
    fields = value.split(":") if value else []
    if len(fields) > 4:
        raise NetOptionError(f"{what}: expected bond=<bondname>[:<bondslaves>[:<options>[:<mtu>]]]")
    name = _ifname(what, fields[0]) if fields and fields[0] else "bond0"
    slaves = tuple(_ifname(what, s) for s in fields[1].split(",")) if len(fields) > 1 and fields[1] \
        else ("eth0", "eth1")
    if len(set(slaves)) != len(slaves) or name in slaves:
        raise NetOptionError(f"{what}: a slave is listed twice or is the bond itself")
    options: list[tuple[str, str]] = []
    for item in (fields[2].split(",") if len(fields) > 2 and fields[2] else []):
        key, sep, option = item.partition("=")
        if not sep or not option:
            raise NetOptionError(f"{what}: bonding option {item!r} is not NAME=VALUE")
        if key not in BOND_OPTIONS:
            raise NetOptionError(f"{what}: unknown bonding option {key!r} (known: {', '.join(BOND_OPTIONS)})")
        if key == "mode":
            option = BOND_MODES.get(option, option)
            if option not in BOND_MODES.values():
                raise NetOptionError(f"{what}: bonding mode {option!r} is not one of "
                                     f"{', '.join(BOND_MODES.values())}")
        if key == "arp_ip_target":
            option = ",".join(_address(what, t, "4") for t in option.split(";"))
        options.append((key, option))
    options.sort(key=lambda kv: kv[0] != "mode")   # the mode can only change while the bond has no slaves
    mtu = _mtu(what, fields[3]) if len(fields) > 3 and fields[3] else 0
    return Bond(name, slaves, tuple(options), mtu)


def parse_ifname(value: str) -> tuple[str, str]:
    name, sep, mac = value.partition(":")
    if not sep:
        raise NetOptionError(f"ifname={value}: expected ifname=<interface>:<MAC>")
    if mac.count(":") == 19:
        raise NetOptionError(f"ifname={value}: 20-byte (InfiniBand) addresses are not supported")
    return _ifname(f"ifname={value}", name), normalize_mac(f"ifname={value}", mac)


def parse_route(value: str) -> Route:
    """rd.route=<net>/<prefix or netmask>:<gateway>[:<interface>] (IPv6 addresses in brackets)."""
    what = f"rd.route={value}"
    fields = split_fields(value)
    if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
        raise NetOptionError(f"{what}: expected rd.route=<net>/<netmask>:<gateway>[:<interface>]")
    net = fields[0][1:-1] if fields[0].startswith("[") and fields[0].endswith("]") else fields[0]
    address, slash, mask = net.partition("/")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    family = address_family(address)
    if not family or not slash:
        raise NetOptionError(f"{what}: {fields[0]!r} is not <network>/<prefix>")
    prefix = 0 if mask == "0" else _prefix(what, mask, family)
    import _socket

    packed = _socket.inet_pton(_socket.AF_INET if family == "4" else _socket.AF_INET6, address)
    if int.from_bytes(packed, "big") & ((1 << (len(packed) * 8 - prefix)) - 1):
        raise NetOptionError(f"{what}: {address}/{prefix} has host bits set (the network is a prefix)")
    gateway = _address(what, fields[1], family)
    device = _ifname(what, fields[2]) if len(fields) == 3 and fields[2] else ""
    return Route(f"{canonical(address)}/{prefix}", gateway, device)


def parse_bootif(value: str) -> str:
    """BOOTIF=01-52-54-00-12-34-56 (pxelinux: hardware type 01, then the MAC); a bare MAC is accepted too."""
    parts = value.replace(":", "-").split("-")
    if len(parts) == 7 and parts[0] == "01":
        parts = parts[1:]
    elif len(parts) == 7:
        raise NetOptionError(f"BOOTIF={value}: hardware type {parts[0]} is not Ethernet (01)")
    return normalize_mac(f"BOOTIF={value}", "-".join(parts))


def parse_network(words: list[tuple[str, str | None]]) -> NetPlan:
    """``words``: (key, value or None when bare) for each network option, in command-line order."""
    configs: dict[str, IfaceConfig] = {}
    vlans: dict[str, Vlan] = {}
    bonds: dict[str, Bond] = {}
    names: dict[str, str] = {}
    values: dict[str, object] = {}
    routes, nameservers, timeouts = [], [], {}
    bootif_enabled = True
    for key, value in words:
        text = value or ""
        if key in REFUSED_KEYS:
            raise NetOptionError(f"{key}=: {REFUSED_KEYS[key]}")
        if key == "ip":
            config = parse_ip(text)
            configs[config.device] = merge(configs[config.device], config) if config.device in configs else config
        elif key == "vlan":
            vlan = parse_vlan(text)
            if vlan.name in vlans:
                raise NetOptionError(f"vlan={text}: {vlan.name} is defined twice")
            vlans[vlan.name] = vlan
        elif key == "bond":
            bond = parse_bond(value)
            if bond.name in bonds:
                raise NetOptionError(f"bond={text}: {bond.name} is defined twice")
            bonds[bond.name] = bond
        elif key == "ifname":
            name, mac = parse_ifname(text)
            if names.get(name, mac) != mac or (mac in names.values() and names.get(name) != mac):
                raise NetOptionError(f"ifname={text}: that name or MAC already has another ifname=")
            names[name] = mac
        elif key == "nameserver":
            nameservers.append(_address(f"nameserver={text}", text))
        elif key == "rd.route":
            routes.append(parse_route(text))
        elif key == "BOOTIF":
            values["bootif"] = parse_bootif(text)
        elif key == "bootdev":
            values["bootdev"] = _ifname(f"bootdev={text}", text)
        elif key == "rd.bootif":
            bootif_enabled = _bool(key, text, value is None)
        elif key == "rd.peerdns":
            values["peerdns"] = _bool(key, text, value is None)
        elif key == "rd.neednet":
            values["neednet"] = _bool(key, text, value is None)
        elif key == "rd.net.dhcp.retry":
            if not text.isdigit() or not 1 <= int(text) <= 100:
                raise NetOptionError(f"{key}={text!r}: give a number of attempts from 1 to 100")
            values["dhcp_retry"] = int(text)
        elif key.startswith("rd.net.timeout.") and key[len("rd.net.timeout."):] in TIMEOUTS:
            timeouts[key[len("rd.net.timeout."):]] = _seconds(key, text)
        else:
            raise NetOptionError(f"{key} is not supported by layerboot's stage1 (supported: rd.net.timeout."
                                 f"{{{','.join(TIMEOUTS)}}}, rd.net.dhcp.retry)")
    if "" in configs and len(configs) > 1:
        raise NetOptionError("several ip= settings for different interfaces: name the interface in each "
                             "(ip=<interface>:dhcp, ip=...:<interface>:none)")
    for vlan in vlans.values():
        if vlan.name in bonds or vlan.name == vlan.parent:
            raise NetOptionError(f"vlan={vlan.name}:{vlan.parent}: {vlan.name} is also a bond or its own parent")
    enslaved: dict[str, str] = {}
    for bond in bonds.values():
        for slave in bond.slaves:
            if slave in enslaved:
                raise NetOptionError(f"bond={bond.name}: {slave} is already a slave of {enslaved[slave]}")
            if slave in bonds or slave in vlans:
                raise NetOptionError(f"bond={bond.name}: {slave} is a bond or VLAN, not a physical interface")
            if slave in configs:
                raise NetOptionError(f"ip={configs[slave].text}: {slave} is a slave of {bond.name}; configure "
                                     f"{bond.name} instead")
            enslaved[slave] = bond.name
    for vlan in vlans.values():
        if vlan.parent in enslaved:
            raise NetOptionError(f"vlan={vlan.name}:{vlan.parent}: {vlan.parent} is a slave of "
                                 f"{enslaved[vlan.parent]}; put the VLAN on {enslaved[vlan.parent]}")
    if not bootif_enabled:
        values.pop("bootif", None)
    return NetPlan(configs=tuple(configs.values()), vlans=tuple(vlans.values()), bonds=tuple(bonds.values()),
                   names=tuple(names.items()), routes=tuple(routes), nameservers=tuple(nameservers),
                   timeouts=tuple(sorted(timeouts.items())), **values)  # type: ignore[arg-type]
