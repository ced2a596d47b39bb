"""IPv6 for the net stage: static addresses, SLAAC (``auto6``: the kernel does it, stage1 watches over netlink),
DHCPv6 (``dhcp6``: dhcp6.py), ``either6`` (SLAAC, else DHCPv6) and ``link6`` (link-local only).

Optimistic DAD (RFC 4429, ``optimistic_dad`` + ``use_optimistic``) is switched on for the interfaces stage1
configures, so link-local and new addresses are usable at once instead of after the ~1-2 s of duplicate address
detection; a duplicate found later still marks the address ``dadfailed``, which :func:`check_duplicates` turns
into a clear error at the end of the net stage. The first router solicitation goes out without the kernel's
1 s ``router_solicitation_delay``.
"""

from __future__ import annotations

import time

from .console import StageError, debug, say
from .dhcp import Lease
from .netlink import AF_INET6, IFA_F_DADFAILED, IFA_F_OPTIMISTIC, IFA_F_TENTATIVE, RTPROT_RA, NetlinkError

CONF = "/proc/sys/net/ipv6/conf"


def _sysctl(device: str, key: str, value: str) -> bool:
    try:
        with open(f"{CONF}/{device}/{key}", "w", encoding="ascii") as f:
            f.write(value)
        return True
    except OSError:
        return False


def prepare(devices: list[str]) -> None:
    """Before links come up, for new devices and these ones (best effort: a kernel may lack a knob): optimistic
    DAD, and the first router solicitation at once instead of after the kernel's fixed 1 s delay (as
    systemd-networkd's own solicitations do); the router's answer brings SLAAC addresses and routes."""
    for device in ["default", *devices]:
        _sysctl(device, "optimistic_dad", "1")
        _sysctl(device, "use_optimistic", "1")
        _sysctl(device, "router_solicitation_delay", "0")


def usable(flags: int) -> bool:
    return not flags & IFA_F_DADFAILED and (not flags & IFA_F_TENTATIVE or bool(flags & IFA_F_OPTIMISTIC))


def _wait(predicate, timeout: float, interval: float = 0.05):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_link_local(run, name: str, index: int) -> None:  # noqa: ANN001 - net.Bringup
    timeout = run.wait_for("ipv6dad")
    found = _wait(lambda: [a for a in run.nl.addresses(index, AF_INET6)
                           if a[0].startswith("fe80:") and usable(a[3])], timeout)
    if not found:
        raise StageError(f"{name} has no usable IPv6 link-local address after {timeout:g}s (IPv6 disabled, or "
                         "duplicate address detection failed)")


def ra_gateway(run, index: int) -> str:  # noqa: ANN001
    return next((r[2] for r in run.nl.routes(AF_INET6) if r[1] == 0 and r[2] and r[3] == index), "")


def add_address(run, name: str, index: int, address: str, prefix: int) -> None:  # noqa: ANN001
    try:
        run.nl.add_address(index, address, prefix, flags=IFA_F_OPTIMISTIC, what=f"{name}: adding {address}/{prefix}")
    except NetlinkError as err:
        if err.errno != 22:   # EINVAL: this kernel has no optimistic DAD for static addresses
            raise
        run.nl.add_address(index, address, prefix, what=f"{name}: adding {address}/{prefix}")


def slaac(run, name: str, index: int, timeout: float) -> Lease | None:  # noqa: ANN001
    """The first global address the kernel made from a router advertisement, with stateless DHCPv6 options."""
    found = _wait(lambda: [a for a in run.nl.addresses(index, AF_INET6)
                           if a[2] == 0 and usable(a[3]) and not a[0].startswith("fe80:")], timeout)
    if not found:
        return None
    address, prefix = found[0][0], found[0][1]
    lease = Lease(address, prefix, router=ra_gateway(run, index), source="auto6")
    managed, other = run.nl.ra_flags(index)
    if managed or other:   # the router says a DHCPv6 server has more to tell (DNS, search list, NTP)
        from .dhcp6 import request_information
        from .net import mac_of

        info = request_information(name, index, mac_of(name), total=min(run.wait_for("dhcp"), 5.0))
        if info is not None:
            lease = Lease(address, prefix, router=lease.router, dns=info.dns, hostname=info.hostname,
                          domain=info.domain, search=info.search, ntp=info.ntp, server=info.server,
                          source="auto6")
        else:
            debug(f"{name}: no DHCPv6 information reply (the router advertised the O/M flag)")
    return lease


def dhcp6(run, name: str, index: int) -> Lease:  # noqa: ANN001
    from .dhcp6 import request_lease6
    from .net import mac_of

    wait_link_local(run, name, index)
    debug(f"{name}: link-local address usable; DHCPv6 solicit")
    lease = request_lease6(name, index, mac_of(name), total=run.plan.timeout("dhcp", max(run.timeout, 4.0) * 3))
    add_address(run, name, index, lease.address, 128)
    debug(f"{name}: {lease.address}/128 added; waiting for a router advertisement")
    # DHCPv6 has no routes: the on-link prefix and the default route come from router advertisements.
    timeout = run.wait_for("ipv6auto")
    if not _wait(lambda: any(r[3] == index and r[4] == RTPROT_RA for r in run.nl.routes(AF_INET6)), timeout):
        say(f"{name}: no IPv6 router advertisement within {timeout:g}s: {lease.address} reaches only its link")
    else:
        debug(f"{name}: routes from a router advertisement")
    return Lease(lease.address, 128, router=ra_gateway(run, index), dns=lease.dns, hostname=lease.hostname,
                 domain=lease.domain, search=lease.search, ntp=lease.ntp, server=lease.server,
                 lifetime=lease.lifetime, source="dhcp6")


def configure(run, config, metric: int) -> Lease | None:  # noqa: ANN001 - net.Bringup, netcmd.IfaceConfig
    """Apply ``config``'s IPv6 method; the lease describes the address it got (None for link6 or no IPv6)."""
    name = config.device
    from .net import ifindex

    index = ifindex(name)
    if not config.v6:
        return None
    _sysctl(name, "disable_ipv6", "0")
    if config.v6 == "static":
        add_address(run, name, index, config.address6, config.prefix6)
        if config.gateway6:
            run.add_default(config.gateway6, index, metric, name)
        return Lease(config.address6, config.prefix6, router=config.gateway6, hostname=config.hostname,
                     source="static")
    if config.v6 == "link6":
        wait_link_local(run, name, index)
        say(f"{name}: IPv6 link-local only (link6)")
        return None
    if config.v6 == "dhcp6":
        return dhcp6(run, name, index)
    _sysctl(name, "accept_ra", "1")
    _sysctl(name, "autoconf", "1")
    timeout = run.wait_for("ipv6auto")
    lease = slaac(run, name, index, timeout)
    if lease is not None:
        return lease
    if config.v6 == "either6":
        say(f"{name}: no SLAAC address within {timeout:g}s; trying DHCPv6 (either6)")
        return dhcp6(run, name, index)
    raise StageError(f"{name}: no IPv6 address from router advertisements (SLAAC) within {timeout:g}s")


def check_duplicates(run, configs: list) -> None:  # noqa: ANN001
    from .net import ifindex

    for config in configs:
        if not config.v6:
            continue
        for address, prefix, _, flags in run.nl.addresses(ifindex(config.device), AF_INET6):
            if flags & IFA_F_DADFAILED:
                raise StageError(f"{config.device}: {address}/{prefix} is already used by another host (IPv6 "
                                 "duplicate address detection failed)")
