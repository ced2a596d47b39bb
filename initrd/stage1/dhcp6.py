"""A small DHCPv6 client (RFC 8415): Solicit → Advertise → Request → Reply for one address (IA_NA), or a stateless
Information-request when SLAAC gave the address and the router advertisement said "other configuration".

Options asked for: DNS servers (23), domain search list (24), NTP servers (56, RFC 5908; SNTP 31 as well) and the
client FQDN (39, RFC 4704), from which the host name is taken. DHCPv6 has no router or prefix option: the
default route and the on-link prefix come from router advertisements (the kernel handles those), so the leased
address is added as a /128, like dhclient and NetworkManager do.
"""

from __future__ import annotations

import os
import struct
import time

from .console import StageError, debug
from .dhcp import Lease, dns_names

SOLICIT, ADVERTISE, REQUEST, REPLY, INFORMATION_REQUEST = 1, 2, 3, 7, 11
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 5, 6
OPT_ELAPSED, OPT_STATUS, OPT_DNS, OPT_DOMAINS, OPT_SNTP, OPT_FQDN, OPT_NTP = 8, 13, 23, 24, 31, 39, 56
WANTED = (OPT_DNS, OPT_DOMAINS, OPT_SNTP, OPT_FQDN, OPT_NTP)
ALL_SERVERS = "ff02::1:2"
SO_BINDTODEVICE = 25
STATUS_NAMES = {1: "UnspecFail", 2: "NoAddrsAvail", 3: "NoBinding", 4: "NotOnLink", 5: "UseMulticast"}


def option(code: int, payload: bytes) -> bytes:
    return struct.pack("!HH", code, len(payload)) + payload


def parse_options(data: bytes) -> dict[int, list[bytes]]:
    options: dict[int, list[bytes]] = {}
    i = 0
    while i + 4 <= len(data):
        code, length = struct.unpack_from("!HH", data, i)
        options.setdefault(code, []).append(data[i + 4:i + 4 + length])
        i += 4 + length
    return options


def duid(mac: str) -> bytes:
    """DUID-LL (type 3, hardware type 1): stable for the NIC, no clock or storage needed."""
    return struct.pack("!HH", 3, 1) + bytes.fromhex(mac.replace(":", ""))


def build_message(kind: int, xid: int, mac: str, *, elapsed: float = 0.0, server_id: bytes = b"",
                  ia_na: bytes | None = None) -> bytes:
    """A client message. ``ia_na``: None for no IA_NA (Information-request), b"" for an empty one (Solicit), or
    the server's IA_NA options to ask for that address (Request)."""
    body = option(OPT_CLIENTID, duid(mac))
    if server_id:
        body += option(OPT_SERVERID, server_id)
    if ia_na is not None:
        iaid = bytes.fromhex(mac.replace(":", ""))[-4:]
        body += option(OPT_IA_NA, iaid + struct.pack("!II", 0, 0) + ia_na)
    body += option(OPT_ELAPSED, struct.pack("!H", min(int(elapsed * 100), 0xFFFF)))
    body += option(OPT_ORO, b"".join(struct.pack("!H", code) for code in WANTED))
    if kind != INFORMATION_REQUEST:
        body += option(OPT_FQDN, b"\x00\x00")   # flags 0, empty name: "tell me my name"
    return struct.pack("!I", (kind << 24) | xid) + body


def _addresses6(data: bytes) -> tuple[str, ...]:
    import _socket

    return tuple(_socket.inet_ntop(_socket.AF_INET6, data[i:i + 16]) for i in range(0, len(data) - 15, 16))


def _status(options: dict[int, list[bytes]]) -> tuple[int, str]:
    raw = options.get(OPT_STATUS, [b""])[0]
    if len(raw) < 2:
        return 0, ""
    return struct.unpack_from("!H", raw)[0], raw[2:].decode("utf-8", "replace")


def parse_reply(data: bytes, xid: int, client: bytes) -> tuple[int, dict[int, list[bytes]]] | None:
    """(message type, options) of a server message for our ``xid`` and client DUID; None for anything else."""
    if len(data) < 4:
        return None
    head = struct.unpack_from("!I", data)[0]
    if head & 0xFFFFFF != xid or head >> 24 not in (ADVERTISE, REPLY):
        return None
    options = parse_options(data[4:])
    if options.get(OPT_CLIENTID, [b""])[0] != client or OPT_SERVERID not in options:
        return None
    return head >> 24, options


def lease_from(options: dict[int, list[bytes]], *, source: str = "dhcp6") -> Lease:
    """The address (if any) and the configuration options of an Advertise or Reply."""
    address, valid = "", 0
    for ia in options.get(OPT_IA_NA, []):
        inner = parse_options(ia[12:])
        for iaaddr in inner.get(OPT_IAADDR, []):
            if len(iaaddr) >= 24 and _status(parse_options(iaaddr[24:]))[0] == 0:
                address = _addresses6(iaaddr[:16])[0]
                valid = struct.unpack_from("!I", iaaddr, 20)[0]
    ntp: list[str] = []
    for raw in options.get(OPT_NTP, []):
        for code, values in parse_options(raw).items():
            for value in values:
                if code in (1, 2) and len(value) == 16:   # server or multicast address
                    ntp.extend(_addresses6(value))
                elif code == 3:                           # server FQDN
                    ntp.extend(dns_names(value))
    for raw in options.get(OPT_SNTP, []):
        ntp.extend(a for a in _addresses6(raw) if a not in ntp)
    hostname = ""
    fqdn = options.get(OPT_FQDN, [b""])[0]
    if len(fqdn) > 1:
        names = dns_names(fqdn[1:] + (b"" if fqdn.endswith(b"\0") else b"\0"))
        hostname = names[0] if names else ""
    domains = tuple(name for raw in options.get(OPT_DOMAINS, []) for name in dns_names(raw))
    hostname, _, fqdn_domain = hostname.partition(".")   # like DHCPv4's options 12 and 15
    server = options.get(OPT_SERVERID, [b""])[0].hex()
    return Lease(address, 128, dns=tuple(a for raw in options.get(OPT_DNS, []) for a in _addresses6(raw)),
                 hostname=hostname, domain=fqdn_domain or (domains[0] if domains else ""), search=domains,
                 ntp=tuple(ntp),
                 server=server, lifetime=0 if valid == 0xFFFFFFFF else valid, source=source)


class _Client:
    def __init__(self, interface: str, index: int, mac: str) -> None:
        import _socket

        self.interface, self.index, self.mac = interface, index, mac
        self.client = duid(mac)
        self.started = time.monotonic()
        self.sock = _socket.socket(_socket.AF_INET6, _socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(_socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
            self.sock.bind(("::", 546))
        except OSError as err:
            self.sock.close()
            raise StageError(f"DHCPv6 on {interface}: cannot open the client port 546: {err.strerror}") from None

    def exchange(self, kind: int, want: int, deadline: float, **fields: object):  # noqa: ANN003, ANN202
        """Send ``kind`` (retransmitting with doubling waits, RFC 8415 15) until a ``want`` reply or ``deadline``."""
        xid = int.from_bytes(os.urandom(3), "big")
        wait = 1.0
        while time.monotonic() < deadline:
            message = build_message(kind, xid, self.mac, elapsed=time.monotonic() - self.started,
                                    **fields)  # type: ignore[arg-type]
            try:
                self.sock.sendto(message, (ALL_SERVERS, 547, 0, self.index))
            except OSError as err:   # no usable source address yet: try again shortly, not after ``wait``
                debug(f"DHCPv6 send on {self.interface}: {err.strerror}")
                time.sleep(0.1)
                continue
            until = min(time.monotonic() + wait, deadline)
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(4096)
                except OSError:
                    break
                reply = parse_reply(data, xid, self.client)
                if reply is not None and reply[0] == want:
                    return reply[1]
            wait = min(wait * 2, 8.0)
        return None

    def close(self) -> None:
        self.sock.close()


def request_lease6(interface: str, index: int, mac: str, *, total: float) -> Lease:
    """Solicit → Advertise → Request → Reply; the address is in the returned Lease."""
    client = _Client(interface, index, mac)
    deadline = time.monotonic() + total
    try:
        while time.monotonic() < deadline:
            advertise = client.exchange(SOLICIT, ADVERTISE, deadline, ia_na=b"")
            if advertise is None:
                break
            offered = lease_from(advertise)
            if not offered.address:
                code, message = _status(advertise)
                for ia in advertise.get(OPT_IA_NA, []):
                    code, message = _status(parse_options(ia[12:])) if not code else (code, message)
                debug(f"DHCPv6 advertise without an address: {STATUS_NAMES.get(code, code)} {message}")
                continue
            ia_options = advertise[OPT_IA_NA][0][12:]
            reply = client.exchange(REQUEST, REPLY, min(deadline, time.monotonic() + 10),
                                    server_id=advertise[OPT_SERVERID][0], ia_na=ia_options)
            if reply is not None:
                lease = lease_from(reply)
                if lease.address:
                    debug(f"DHCPv6 reply from {lease.server}: {lease}")
                    return lease
    finally:
        client.close()
    raise StageError(f"no DHCPv6 answer on {interface} within {total:.0f}s")


def request_information(interface: str, index: int, mac: str, *, total: float) -> Lease | None:
    """Stateless DHCPv6 (RA with the O flag): DNS, search list, NTP. None when no server answered."""
    client = _Client(interface, index, mac)
    try:
        reply = client.exchange(INFORMATION_REQUEST, REPLY, time.monotonic() + total)
    finally:
        client.close()
    return lease_from(reply, source="dhcp6-info") if reply is not None else None
