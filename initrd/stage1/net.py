"""Bring up the boot interface: the kernel's ``ip=`` settings when given, else DHCP (stage1's own client).

Interfaces are configured with the classic SIOCSIF* / SIOCADDRT ioctls through ``fcntl``: IPv4 only, no netlink
library to import. pyroute2 was measured and not used: importing it costs seconds under TCG, and its DHCP client
(0.9) is asyncio based. Debian's cloud kernel has no CONFIG_IP_PNP, so the kernel never configures ``ip=`` itself;
a link that already has an address (set by an earlier hook) is used as is.
"""

from __future__ import annotations

import os
import struct
import time

from .console import StageError, debug, say

SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGIFADDR, SIOCSIFADDR = 0x8915, 0x8916
SIOCSIFNETMASK = 0x891C
SIOCADDRT = 0x890B
IFF_UP = 0x1
RTF_UP, RTF_GATEWAY = 0x1, 0x2
ARPHRD_ETHER = 1


class Lease:
    """An IPv4 configuration: from DHCP or from ``ip=``."""

    def __init__(self, address: str, netmask: str, router: str = "", dns: tuple[str, ...] = (),
                 source: str = "dhcp") -> None:
        self.address, self.netmask, self.router, self.dns, self.source = address, netmask, router, dns, source

    def __repr__(self) -> str:
        return f"{self.address}/{self.netmask} via {self.router or '-'} ({self.source})"


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def ethernet_interfaces() -> list[str]:
    names = []
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            if int(_read(f"/sys/class/net/{name}/type")) == ARPHRD_ETHER and name != "lo":
                names.append(name)
        except (OSError, ValueError):
            continue
    return names


def mac_of(name: str) -> str:
    return _read(f"/sys/class/net/{name}/address").lower()


def find_interface(wanted: str, mac: str, timeout: float) -> str:
    """The named interface, else the one with the node's MAC, else the first ethernet; waits for the driver."""
    deadline = time.monotonic() + timeout
    while True:
        names = ethernet_interfaces()
        if wanted and wanted in names:
            return wanted
        if not wanted:
            for name in names:
                if not mac or mac_of(name) == mac:
                    return name
        if time.monotonic() > deadline:
            what = wanted or (f"with MAC {mac}" if mac else "ethernet")
            raise StageError(f"no network interface {what} appeared within {timeout:.0f}s "
                             f"(found: {', '.join(names) or 'none'})")
        time.sleep(0.05)


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _sockaddr(address: str) -> bytes:
    import _socket

    return struct.pack("=H2s4s8s", _socket.AF_INET, b"\0\0", _socket.inet_aton(address), b"")


def _ioctl_socket():  # noqa: ANN202 - _socket.socket
    import _socket

    return _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)


def link_up(name: str) -> None:
    import fcntl

    sock = _ioctl_socket()
    try:
        flags = struct.unpack_from("H", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _ifreq(name)), 16)[0]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | IFF_UP)))
    finally:
        sock.close()


def current_address(name: str) -> str:
    import _socket
    import fcntl

    sock = _ioctl_socket()
    try:
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, _ifreq(name))
    except OSError:
        return ""
    finally:
        sock.close()
    return _socket.inet_ntoa(reply[20:24])


def configure(name: str, lease: Lease) -> None:
    import fcntl

    sock = _ioctl_socket()
    try:
        fcntl.ioctl(sock.fileno(), SIOCSIFADDR, _ifreq(name, _sockaddr(lease.address)))
        fcntl.ioctl(sock.fileno(), SIOCSIFNETMASK, _ifreq(name, _sockaddr(lease.netmask)))
        if lease.router:
            any_addr = _sockaddr("0.0.0.0")
            # struct rtentry (x86_64): pad1, dst, gateway, genmask, flags, pad2, pad3, pad4, metric, dev, mtu,
            # window, irtt
            route = struct.pack("@L16s16s16sHhLPhPLLH", 0, any_addr, _sockaddr(lease.router), any_addr,
                                RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
            try:
                fcntl.ioctl(sock.fileno(), SIOCADDRT, route)
            except OSError as err:
                if err.errno != 17:  # EEXIST
                    raise StageError(f"cannot add the default route via {lease.router}: {err.strerror}") from None
    except OSError as err:
        raise StageError(f"cannot configure {name} with {lease}: {err.strerror}") from None
    finally:
        sock.close()
    if lease.dns:
        try:
            os.makedirs("/etc", exist_ok=True)
            with open("/etc/resolv.conf", "w", encoding="ascii") as f:
                f.write("".join(f"nameserver {server}\n" for server in lease.dns))
        except OSError:
            pass


def parse_ip_option(value: str) -> Lease | None:
    """Kernel ``ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>``; None means "use DHCP"."""
    if value in ("", "dhcp", "on", "any", "both", "bootp"):
        return None
    fields = value.split(":")
    if len(fields) < 4 or not fields[0] or not fields[3]:
        if len(fields) >= 7 and fields[6] in ("dhcp", "on", "any", "both"):
            return None
        raise StageError(f"ip={value} is neither 'dhcp' nor a static <client>::<gw>:<netmask>:... setting")
    dns = tuple(f for f in fields[7:9] if f)
    return Lease(fields[0], fields[3], fields[2], dns, source="ip=")


def ip_option_device(value: str) -> str:
    fields = value.split(":")
    return fields[5] if len(fields) > 5 else ""


def bring_up(interface: str, mac: str, ip_option: str, timeout: float) -> tuple[str, Lease]:
    """Return (interface, lease) for a configured boot interface."""
    name = find_interface(interface or ip_option_device(ip_option), mac, timeout)
    link_up(name)
    existing = current_address(name)
    if existing:
        debug(f"{name} already has {existing}")
        return name, Lease(existing, "", source="existing")
    lease = parse_ip_option(ip_option)
    if lease is None:
        from .dhcp import request_lease

        lease = request_lease(name, mac_of(name), timeout=timeout)
    configure(name, lease)
    say(f"{name} {mac_of(name)}: {lease}")
    return name, lease
