"""A small DHCPv4 client (RFC 2131): DISCOVER → OFFER → REQUEST → ACK over a UDP socket bound to the interface.

Enough for netboot: broadcast replies, retries with backoff, and the options a booted node needs: subnet mask (1),
router (3), DNS servers (6), host name (12), domain (15), interface MTU (26), NTP servers (42), log servers (7)
and the domain search list (119, RFC 3397; long options split over several instances are joined, RFC 3396).
No lease renewal: the booted system's own network setup takes over after switch_root.
"""

from __future__ import annotations

import os
import struct
import time

from .console import StageError, debug
from .record import Record

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
SO_BINDTODEVICE = 25
# subnet mask, router, DNS, host name, domain, MTU, NTP, log server, search list, lease time, server id
WANTED_OPTIONS = bytes([1, 3, 6, 12, 15, 26, 42, 7, 119, 51, 54])
_HEADER = struct.Struct("!BBBBIHHIIII16s64s128s")


class Lease(Record):
    """An address with what the server (or the command line) said about the network around it."""

    address: str
    prefix: int
    router: str = ""
    dns: tuple[str, ...] = ()
    hostname: str = ""
    domain: str = ""
    search: tuple[str, ...] = ()
    ntp: tuple[str, ...] = ()
    log_servers: tuple[str, ...] = ()
    mtu: int = 0
    server: str = ""                 # the DHCP server's identifier (address, or DUID in hex for DHCPv6)
    lifetime: int = 0                # seconds; 0 = unknown or infinite
    source: str = "dhcp"             # dhcp, dhcp6, static, auto6, existing

    def __str__(self) -> str:
        via = f" via {self.router}" if self.router else ""
        return f"{self.address}/{self.prefix}{via} ({self.source})"


def build_packet(kind: int, xid: int, mac: str, requested: str = "", server_id: str = "") -> bytes:
    import _socket

    chaddr = bytes.fromhex(mac.replace(":", ""))
    header = _HEADER.pack(1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0, chaddr, b"", b"")
    options = bytearray(MAGIC)
    options += bytes([53, 1, kind])
    options += bytes([61, 7, 1]) + chaddr
    if requested:
        options += bytes([50, 4]) + _socket.inet_aton(requested)
    if server_id:
        options += bytes([54, 4]) + _socket.inet_aton(server_id)
    options += bytes([55, len(WANTED_OPTIONS)]) + WANTED_OPTIONS
    options += b"\xff"
    return header + bytes(options)


def parse_packet(data: bytes, xid: int) -> tuple[int, str, dict[int, bytes]] | None:
    """(message type, your-address, options) for a reply to ``xid``; None for anything else."""
    if len(data) < _HEADER.size + 4 or data[0] != 2:
        return None
    fields = _HEADER.unpack_from(data)
    if fields[4] != xid or data[_HEADER.size:_HEADER.size + 4] != MAGIC:
        return None
    import _socket

    options: dict[int, bytes] = {}
    i = _HEADER.size + 4
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        length = data[i + 1]
        options[code] = options.get(code, b"") + data[i + 2:i + 2 + length]   # RFC 3396: instances concatenate
        i += 2 + length
    kind = options.get(53, b"\0")[0]
    return kind, _socket.inet_ntoa(struct.pack("!I", fields[8])), options


def addresses(value: bytes) -> tuple[str, ...]:
    import _socket

    return tuple(_socket.inet_ntoa(value[i:i + 4]) for i in range(0, len(value) - 3, 4))


def text(value: bytes) -> str:
    """A host or domain name option: printable ASCII, NUL padding dropped; anything else is ignored."""
    name = value.split(b"\0", 1)[0].decode("ascii", "replace").strip().rstrip(".")
    ok = name and all(c.isalnum() or c in "-." for c in name)
    return name if ok else ""


def dns_names(data: bytes) -> tuple[str, ...]:
    """RFC 1035 names as in option 119 and DHCPv6 option 24: labels, with compression pointers (RFC 3397)."""
    names: list[str] = []
    i = 0
    while i < len(data):
        labels: list[str] = []
        pos, jumps, end = i, 0, -1
        while True:
            if pos >= len(data):
                return tuple(names)   # truncated: keep what was complete
            length = data[pos]
            if length & 0xC0 == 0xC0:
                if pos + 1 >= len(data) or jumps > 16:
                    return tuple(names)
                if end < 0:
                    end = pos + 2
                pos, jumps = ((length & 0x3F) << 8) | data[pos + 1], jumps + 1
                continue
            if length == 0:
                if end < 0:
                    end = pos + 1
                break
            labels.append(data[pos + 1:pos + 1 + length].decode("ascii", "replace"))
            pos += 1 + length
        name = ".".join(labels)
        if name and text(name.encode()) == name and name not in names:
            names.append(name)
        i = end
    return tuple(names)


def lease_from(address: str, options: dict[int, bytes]) -> Lease:
    mask = options.get(1, b"")
    prefix = bin(int.from_bytes(mask, "big")).count("1") if len(mask) == 4 else 24   # no (valid) mask: a /24
    routers = addresses(options.get(3, b""))
    mtu = struct.unpack("!H", options[26])[0] if len(options.get(26, b"")) == 2 else 0
    lifetime = struct.unpack("!I", options[51])[0] if len(options.get(51, b"")) == 4 else 0
    server = addresses(options.get(54, b""))
    return Lease(address, prefix, router=routers[0] if routers else "", dns=addresses(options.get(6, b"")),
                 hostname=text(options.get(12, b"")), domain=text(options.get(15, b"")),
                 search=dns_names(options.get(119, b"")), ntp=addresses(options.get(42, b"")),
                 log_servers=addresses(options.get(7, b"")), mtu=mtu if mtu >= 68 else 0,
                 server=server[0] if server else "", lifetime=0 if lifetime == 0xFFFFFFFF else lifetime)


def _exchange(sock, packet: bytes, xid: int, want: int, timeout: float):  # noqa: ANN001, ANN202
    sock.sendto(packet, ("255.255.255.255", 67))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except OSError:  # socket.timeout is an OSError
            return None
        reply = parse_packet(data, xid)
        if reply is None:
            continue
        if reply[0] == NAK:
            raise StageError("the DHCP server refused the address it offered (NAK)")
        if reply[0] == want:
            return reply


def request_lease(interface: str, mac: str, *, timeout: float = 10.0, total: float = 0.0) -> Lease:
    """A lease for ``interface``; ``total`` bounds the whole exchange (default three times ``timeout``, ≥ 12 s)."""
    import _socket

    total = total or max(timeout, 4.0) * 3
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_BROADCAST, 1)
        sock.setsockopt(_socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", 68))
        deadline = time.monotonic() + total
        wait = 1.0
        while time.monotonic() < deadline:
            xid = int.from_bytes(os.urandom(4), "big")
            left = max(deadline - time.monotonic(), 0.1)
            offer = _exchange(sock, build_packet(DISCOVER, xid, mac), xid, OFFER, min(wait, left))
            if offer is not None:
                _, address, options = offer
                server = addresses(options.get(54, b""))
                ack = _exchange(sock, build_packet(REQUEST, xid, mac, address, server[0] if server else ""),
                                xid, ACK, wait * 2)
                if ack is not None:
                    lease = lease_from(ack[1], ack[2])
                    debug(f"DHCP ack from {lease.server or '?'}: {lease}")
                    return lease
            wait = min(wait * 2, 8.0)
    finally:
        sock.close()
    raise StageError(f"no DHCP answer on {interface} within {total:.0f}s")
