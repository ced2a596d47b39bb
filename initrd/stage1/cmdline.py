"""Parse the kernel command line into stage1's options: ``layerboot.*`` keys, ``init=``, and dracut's network
options (``ip=``, ``vlan=``, ``bond=``, ``BOOTIF=``, ...; parsed by netcmd.py)."""

from __future__ import annotations

from .netcmd import NetOptionError, NetPlan, is_network_key, parse_network
from .record import Record


EMERGENCY_ACTIONS = ("shell", "reboot", "poweroff")
LAYER_PLACES = ("ram", "cache")
MIRROR_MODES = ("on", "off")
FETCH_MODES = ("full", "stream")
VERIFY_MODES = ("whole", "blocks")      # how fetch.py checks a downloaded layer (docs/stage1.md)
# layerboot.NAME= options that take one word of a fixed set; the Options field has the same name
CHOICES = {"emergency": EMERGENCY_ACTIONS, "layers": LAYER_PLACES, "mirrors": MIRROR_MODES, "fetch": FETCH_MODES,
           "verify": VERIFY_MODES}
STAGES = ("modules", "net", "manifest", "layers", "mount", "switch_root")
DEFAULT_INIT = "/sbin/init"


class CmdlineError(Exception):
    pass


class Options(Record):
    server: str = ""                  # layerboot.server=http://host:port (required unless layerboot.slot=)
    node: str = ""                    # layerboot.node=<mac>; default: the boot interface's MAC
    profile: str = ""                 # layerboot.profile=NAME: the profile this boot is for (required with server=)
    token: str = ""                   # layerboot.token=...: the read-only boot token, "Authorization: Bearer"
    emergency: str = "shell"          # layerboot.emergency=shell|reboot|poweroff
    breaks: tuple[str, ...] = ()      # layerboot.break=net,layers (a shell before each named stage)
    debug: bool = False               # layerboot.debug
    cache: str = ""                   # layerboot.cache=/dev/vdb (ext4/vfat; remembers the last serial)
    slot: str = ""                    # layerboot.slot=UUID=...|PARTLABEL=...|LABEL=...|/dev/X: boot an A/B disk slot
    interface: str = ""               # layerboot.interface=eth0 (default: BOOTIF=, the node MAC's, first with carrier)
    retries: int = 4                  # layerboot.retries=N per download
    timeout: float = 10.0             # layerboot.timeout=SECONDS per network operation
    upper_size: str = "50%"           # layerboot.upper_size=SIZE of the tmpfs for the writable layer
    layers: str = ""                  # layerboot.layers=ram|cache: where fetched layers live (default: cache if any)
    discover: bool = False            # layerboot.discover: the discovery boot of an unknown machine (discover.py)
    clone: str = ""                   # layerboot.clone=NODE (discovery menu): ask to become a clone of NODE
    name: str = ""                    # layerboot.name=NAME (discovery menu): ... named NAME
    mirrors: str = "on"               # layerboot.mirrors=on|off: use the signed manifest's mirrors (sources.py)
    fetch: str = "full"               # layerboot.fetch=full|stream: download whole layers, or stream blocks (stream.py)
    verify: str = "whole"             # layerboot.verify=whole|blocks: hash fetched layers whole, or dm-verity
    stream_giveup: float = 0.0        # layerboot.stream_giveup=SECONDS: a streamed read fails with EIO after (0: never)
    init: str = DEFAULT_INIT          # init=/path of the real init in the new root
    syslog: str = ""                  # layerboot.syslog=off|ADDR[:PORT]|udp://..|tcp://..: stage1's lines (remotelog.py)
    net: NetPlan = NetPlan()          # ip= vlan= bond= ifname= nameserver= BOOTIF= rd.* (dracut syntax, netcmd.py)


def split_cmdline(text: str) -> list[str]:
    """Split like the kernel does: whitespace separated, double quotes group (and are removed)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    have = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            have = True
        elif ch.isspace() and not quoted:
            if have:
                words.append("".join(current))
            current, have = [], False
        else:
            current.append(ch)
            have = True
    if have:
        words.append("".join(current))
    return words


def _positive(key: str, value: str, kind: type) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise CmdlineError(f"{key}={value!r} is not a number") from None
    if number <= 0:
        raise CmdlineError(f"{key}={value!r} must be positive")
    return number


def check_syslog(value: str) -> str:
    """``layerboot.syslog=``: off, or ADDRESS[:PORT] with an optional udp:// or tcp:// (IPv6 in brackets)."""
    import _socket

    if value == "off":
        return value
    protocol, sep, rest = value.partition("://")
    if not sep:
        protocol, rest = "udp", value
    if protocol not in ("udp", "tcp"):
        raise CmdlineError(f"layerboot.syslog={value!r}: use off, ADDRESS[:PORT], udp://ADDRESS[:PORT] or tcp://...")
    if rest.startswith("["):
        address, _, port = rest[1:].partition("]")
        if port and not port.startswith(":"):
            raise CmdlineError(f"layerboot.syslog={value!r}: expected ':PORT' after the bracketed address")
        port, family = port[1:], _socket.AF_INET6
    else:
        address, _, port = rest.partition(":")
        family = _socket.AF_INET
    try:
        _socket.inet_pton(family, address)
    except OSError:
        raise CmdlineError(f"layerboot.syslog={value!r}: {address!r} is not an IP address (IPv6 in brackets)") \
            from None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise CmdlineError(f"layerboot.syslog={value!r}: {port!r} is not a port")
    return value


def parse_cmdline(text: str) -> Options:
    """Return the options; unknown ``layerboot.*`` keys and bad values raise CmdlineError (one clear line)."""
    values: dict[str, object] = {}
    network: list[tuple[str, str | None]] = []
    for word in split_cmdline(text):
        key, sep, value = word.partition("=")
        if key == "init" and sep:
            values["init"] = value
        elif is_network_key(key):
            network.append((key, value if sep else None))
        elif key.startswith("layerboot."):
            name = key[len("layerboot."):]
            if name in ("debug", "discover"):
                values[name] = value.lower() not in ("0", "no", "off", "false") if sep else True
            elif name == "break":
                wanted = tuple(s for s in value.split(",") if s) if sep else ("switch_root",)
                for stage in wanted:
                    if stage not in STAGES:
                        raise CmdlineError(f"layerboot.break={stage!r}: known stages are {', '.join(STAGES)}")
                values["breaks"] = tuple(values.get("breaks", ())) + wanted  # type: ignore[arg-type]
            elif name in CHOICES:
                if value not in CHOICES[name]:
                    raise CmdlineError(f"layerboot.{name}={value!r}: use one of {', '.join(CHOICES[name])}")
                values[name] = value
            elif name == "stream_giveup":
                values[name] = 0.0 if value == "0" else float(_positive(key, value, float))
            elif name == "syslog":
                values["syslog"] = check_syslog(value)
            elif name in ("retries",):
                values[name] = int(_positive(key, value, int))
            elif name == "timeout":
                values[name] = float(_positive(key, value, float))
            elif name in ("server", "node", "profile", "token", "cache", "interface", "upper_size", "slot", "clone",
                          "name"):
                values[name] = value
            else:
                raise CmdlineError(f"unknown kernel option {key}")
    server = str(values.get("server", ""))
    if server:
        if not server.startswith("http://"):
            raise CmdlineError(f"layerboot.server={server!r} must be an http:// URL")
        values["server"] = server.rstrip("/")
        if not values.get("profile") and not values.get("slot") and not values.get("discover"):
            raise CmdlineError("layerboot.server= without layerboot.profile= (layerbootd's iPXE script sets both): "
                               "stage1 boots only a manifest of the profile it was asked for")
    init = str(values.get("init", DEFAULT_INIT))
    if not init.startswith("/"):
        raise CmdlineError(f"init={init!r} must be an absolute path")
    if values.get("layers") == "cache" and not values.get("cache"):
        raise CmdlineError("layerboot.layers=cache needs layerboot.cache= (the disk that holds them)")
    node = str(values.get("node", "")).lower()
    if node:
        values["node"] = node
    try:
        values["net"] = parse_network(network)
    except NetOptionError as err:
        raise CmdlineError(str(err)) from None
    return Options(**values)  # type: ignore[arg-type]


def read_options(path: str = "/proc/cmdline") -> Options:
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_cmdline(f.read())


def raw_emergency(text: str) -> str:
    """``layerboot.emergency=`` from a command line that may not parse as a whole (the last valid one wins)."""
    action = "shell"
    for word in text.split():
        key, _, value = word.partition("=")
        if key == "layerboot.emergency" and value in EMERGENCY_ACTIONS:
            action = value
    return action
