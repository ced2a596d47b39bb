"""A small DHCPv4 client (RFC 2131): DISCOVER → OFFER → REQUEST → ACK over a UDP socket bound to the interface.

Enough for netboot: broadcast replies, the subnet mask, router, DNS and server-id options, retries with backoff.
No lease renewal: the booted system's own network setup takes over after switch_root.
"""

from __future__ import annotations

import os
import struct
import time

from .console import StageError, debug

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
SO_BINDTODEVICE = 25
_HEADER = struct.Struct("!BBBBIHHIIII16s64s128s")


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
    options += bytes([55, 4, 1, 3, 6, 54])
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
        options[code] = data[i + 2:i + 2 + length]
        i += 2 + length
    kind = options.get(53, b"\0")[0]
    return kind, _socket.inet_ntoa(struct.pack("!I", fields[8])), options


def _addresses(value: bytes) -> tuple[str, ...]:
    import _socket

    return tuple(_socket.inet_ntoa(value[i:i + 4]) for i in range(0, len(value) - 3, 4))


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


def request_lease(interface: str, mac: str, *, timeout: float = 10.0) -> "Lease":  # noqa: F821
    import _socket

    from .net import Lease

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_BROADCAST, 1)
        sock.setsockopt(_socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", 68))
        deadline = time.monotonic() + max(timeout, 4.0) * 3
        wait = 1.0
        while time.monotonic() < deadline:
            xid = int.from_bytes(os.urandom(4), "big")
            offer = _exchange(sock, build_packet(DISCOVER, xid, mac), xid, OFFER, wait)
            if offer is not None:
                _, address, options = offer
                server = _addresses(options.get(54, b""))
                ack = _exchange(sock, build_packet(REQUEST, xid, mac, address, server[0] if server else ""),
                                xid, ACK, wait * 2)
                if ack is not None:
                    _, address, options = ack
                    mask = _addresses(options.get(1, b"\xff\xff\xff\x00"))[0]
                    routers = _addresses(options.get(3, b""))
                    lease = Lease(address, mask, routers[0] if routers else "", _addresses(options.get(6, b"")))
                    debug(f"DHCP ack from {server[0] if server else '?'}: {lease}")
                    return lease
            wait = min(wait * 2, 8.0)
    finally:
        sock.close()
    raise StageError(f"no DHCP answer on {interface} within {max(timeout, 4.0) * 3:.0f}s")
