"""Options shared by ``nodes add/set``, ``groups`` and ``clusters``: settings, interfaces, selections, results.

A node is named on the command line by its name or any of its MACs; several by a host list (``n[001-100]``),
``all``, or the filters ``--in-group``, ``--in-cluster``, ``--with-profile``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.fleet.ranges import expand, is_range, nth_address, nth_mac
from layerboot.server.fleet.records import Defaults, FleetNode, Interface, check_vars
from layerboot.tools.args import int_range
from layerboot.tools.context import Context
from layerboot.tools.parser import print_json


def done(ctx: Context, text: str, data: Any) -> int:
    """Print ``data`` as JSON with --json, else ``text``."""
    if getattr(ctx.args, "json", False):
        return print_json(data)
    if text:
        print(text)
    return 0


def fleet(ctx: Context):  # noqa: ANN201
    from layerboot.server.fleet.queries import Fleet
    return Fleet(ctx.database())


def key_mac(ctx: Context, ref: str) -> str:
    """The node's key MAC from its name or any of its MACs."""
    return fleet(ctx).resolve(ref)


def check_profile(ctx: Context):  # noqa: ANN201
    return lambda name: ctx.profiles.current(name)


# -- selections ------------------------------------------------------------------------------------------------
def add_selection(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("nodes", nargs=None if required else "?", metavar="NODES",
                        help="a node (name or MAC), a host list like n[001-100] or n1,n2, or 'all'")
    parser.add_argument("--in-group", metavar="GROUP", help="only nodes in this group")
    parser.add_argument("--in-cluster", metavar="CLUSTER", help="only nodes in this cluster")
    parser.add_argument("--with-profile", metavar="PROFILE", help="only nodes booting this profile")


def select(ctx: Context) -> list[FleetNode]:
    """The named nodes the selection options name, in name order; an error for a name that does not exist."""
    a = ctx.args
    f = fleet(ctx)
    text = a.nodes or "all"
    names = None
    if text != "all":
        if is_range(text):
            names = expand(text)
        else:
            names = [f.get(text).name]
    found = f.nodes(names=names, group=a.in_group, cluster=a.in_cluster, profile=a.with_profile)
    if names is not None and not (a.in_group or a.in_cluster or a.with_profile):
        missing = sorted(set(names) - {n.name for n in found})
        if missing:
            raise LayerbootError(f"no node named {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                  if len(missing) > 1 else ""),
                                 hint="see 'layerboot nodes list'")
    if not found:
        raise LayerbootError("no node matches", hint="see 'layerboot nodes list'")
    return found


# -- settings --------------------------------------------------------------------------------------------------
def add_settings(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("settings (a node's own override its groups', which override its cluster's)")
    g.add_argument("--profile", help="the profile it boots")
    g.add_argument("--kernel-args", metavar="ARGS", help="extra kernel arguments ('' to clear)")
    g.add_argument("--domain", help="DNS domain (hosts get NAME.DOMAIN in /etc/hosts; '' to clear)")
    for name, what in (("dns", "DNS servers"), ("ntp", "time servers"), ("syslog", "log servers")):
        g.add_argument(f"--{name}", metavar="LIST", help=f"{what}, comma separated ('server': layerbootd's address; "
                                                          f"'none': none; 'inherit': take them from above)")
    g.add_argument("--authorized-key", type=Path, action="append", default=[], metavar="FILE",
                   help="an OpenSSH public key file for root's authorized_keys (repeatable)")
    g.add_argument("--no-authorized-keys", action="store_true", help="forget the keys set here")
    g.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="a template variable (repeatable)")
    g.add_argument("--unset-var", action="append", default=[], metavar="KEY", help="remove a template variable")


def _servers(text: str | None, current: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if text is None:
        return current
    if text == "inherit":
        return None
    if text in ("", "none"):
        return ()
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _read_key(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip().splitlines()[0]
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise LayerbootError(f"cannot read the public key {path}: {getattr(err, 'strerror', None) or err}") from None


def apply_settings(d: Defaults, a: argparse.Namespace, owner: str) -> Defaults:
    values = dict(d.vars)
    for item in a.var:
        key, sep, value = item.partition("=")
        if not sep:
            raise LayerbootError(f"--var {item!r} is not KEY=VALUE")
        values[key] = value
    for key in a.unset_var:
        values.pop(key, None)
    keys = () if a.no_authorized_keys else d.authorized_keys
    keys += tuple(_read_key(p) for p in a.authorized_key)
    return replace(d, profile=d.profile if a.profile is None else a.profile,
                   kernel_args=d.kernel_args if a.kernel_args is None else a.kernel_args,
                   domain=d.domain if a.domain is None else a.domain, dns=_servers(a.dns, d.dns),
                   ntp=_servers(a.ntp, d.ntp), syslog=_servers(a.syslog, d.syslog), authorized_keys=keys,
                   vars=check_vars(values, owner)).check(owner)


def settings_given(a: argparse.Namespace) -> bool:
    return any(getattr(a, k) is not None for k in ("profile", "kernel_args", "domain", "dns", "ntp", "syslog")) \
        or bool(a.authorized_key or a.no_authorized_keys or a.var or a.unset_var)


# -- interfaces ------------------------------------------------------------------------------------------------
def add_interface(parser: argparse.ArgumentParser, *, counting: bool = True) -> None:
    g = parser.add_argument_group("an interface (one per command; repeat the command for more)")
    g.add_argument("--interface", metavar="DEV", help="the interface these options are for (default: the node's "
                   "first; a new one is added)")
    if counting:
        g.add_argument("--mac", "--mac-start", dest="mac", metavar="MAC",
                       help="its MAC; over several nodes, the first one's, counted up in name order")
        g.add_argument("--mac-step", type=int_range(1, 1 << 24), default=1, metavar="N", help="MAC increment")
    g.add_argument("--ip", "--ip-start", dest="ip", metavar="ADDR/PREFIX|dhcp",
                   help="IPv4 address with prefix (counted up over several nodes) or 'dhcp'; 'none' to clear")
    if counting:
        g.add_argument("--ip-step", type=int_range(1, 1 << 24), default=1, metavar="N", help="address increment")
    g.add_argument("--gateway", metavar="ADDR", help="IPv4 gateway ('none' to clear)")
    g.add_argument("--ip6", "--ip6-start", dest="ip6", metavar="ADDR/PREFIX|dhcp6|auto6",
                   help="IPv6 address with prefix (counted up), 'dhcp6' or 'auto6'; 'none' to clear")
    g.add_argument("--gateway6", metavar="ADDR", help="IPv6 gateway ('none' to clear)")
    g.add_argument("--mtu", type=int_range(0, 65535), metavar="BYTES", help="MTU (0: the default)")
    g.add_argument("--vlan", type=int_range(0, 4094), metavar="ID", help="addresses on this 802.1Q VLAN (0: none)")
    g.add_argument("--bond", metavar="BOND", help="a slave of this bond ('none' to leave it)")
    g.add_argument("--bond-options", metavar="OPTS", help="for a bond: mode=active-backup,miimon=100 ...")
    g.add_argument("--remove-interface", metavar="DEV", help="remove this interface")


INTERFACE_OPTIONS = ("mac", "ip", "gateway", "ip6", "gateway6", "mtu", "vlan", "bond", "bond_options")


def interface_given(a: argparse.Namespace) -> bool:
    return a.interface is not None or any(getattr(a, k, None) is not None for k in INTERFACE_OPTIONS)


def _clear(value: str | None, current: str) -> str:
    return current if value is None else "" if value == "none" else value


def apply_interface(interfaces: tuple[Interface, ...], a: argparse.Namespace, index: int, name: str, *,
                    default_device: str = "eth0") -> tuple[Interface, ...]:
    """``interfaces`` with the options applied to one (``index``: this node's place in the selection, for
    counting MACs and addresses up). A slave naming a bond the node lacks adds that bond."""
    items = list(interfaces)
    if a.remove_interface:
        items = [i for i in items if i.device != a.remove_interface]
        if len(items) == len(interfaces):
            raise LayerbootError(f"node {name} has no interface {a.remove_interface}")
    if not interface_given(a):
        return tuple(items)
    device = a.interface or (items[0].device if items else default_device)
    position = next((n for n, i in enumerate(items) if i.device == device), None)
    current = items[position] if position is not None else Interface(device=device)
    mac = getattr(a, "mac", None)
    step_mac, step_ip = getattr(a, "mac_step", 1), getattr(a, "ip_step", 1)
    ip, ip6 = a.ip, a.ip6
    if ip and "/" in ip:
        ip = nth_address(ip, index, step_ip, name=name)
    if ip6 and "/" in ip6:
        ip6 = nth_address(ip6, index, step_ip, name=name)
    changed = replace(current, mac=nth_mac(mac, index, step_mac, name=name) if mac else current.mac,
                      ipv4=_clear(ip, current.ipv4), ipv6=_clear(ip6, current.ipv6),
                      gateway=_clear(a.gateway, current.gateway), gateway6=_clear(a.gateway6, current.gateway6),
                      mtu=current.mtu if a.mtu is None else a.mtu, vlan=current.vlan if a.vlan is None else a.vlan,
                      bond=_clear(a.bond, current.bond), bond_options=_clear(a.bond_options, current.bond_options))
    if position is None:
        items.append(changed)
    else:
        items[position] = changed
    if changed.bond and not any(i.device == changed.bond for i in items):
        items.append(Interface(device=changed.bond))
    return tuple(items)


def key_of(interfaces: tuple[Interface, ...], fallback: str = "") -> str:
    return next((i.mac for i in interfaces if i.mac), fallback)
