"""A small rtnetlink client on ``_socket`` (AF_NETLINK): links, VLANs, bonds, IPv4/IPv6 addresses and routes.

stage1 needs a dozen netlink requests, not a netlink library: pyroute2 0.9 brings ~300 modules (asyncio among
them) into the interpreter and costs seconds under TCG; busybox ``ip`` costs a process per command and cannot
create bonds. The figures behind this choice are in docs/stage1.md and ``bench/bench_netlink.py``, which
measures all three in one run. Message layouts are the kernel's uapi headers (linux/netlink.h, rtnetlink.h,
if_link.h, if_addr.h); every request asks for an ACK, so failures come back as the kernel's errno.
"""

from __future__ import annotations

import os
import struct

from .console import StageError

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_CARRIER = 12, 18, 33
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VLAN_ID = 1
IFLA_INET6_FLAGS = 1
IF_RA_OTHERCONF, IF_RA_MANAGED = 0x80, 0x40
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD, IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x04, 0x08, 0x40
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 4, 5, 6
RT_TABLE_MAIN, RTPROT_BOOT, RTPROT_RA, RTN_UNICAST = 254, 3, 9, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
IFF_UP = 0x1
AF_INET, AF_INET6 = 2, 10

_HEADER = struct.Struct("=IHHII")       # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")      # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")       # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")    # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")            # rtattr: len, type


class NetlinkError(StageError):
    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


def attr(kind: int, payload: bytes) -> bytes:
    data = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """rtattr list → {type: payload} (the last one wins; the nested flag bit is dropped)."""
    attrs: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3
    return attrs


def pack_address(address: str) -> tuple[int, bytes]:
    import _socket

    family = AF_INET6 if ":" in address else AF_INET
    return family, _socket.inet_pton(family, address)


def unpack_address(family: int, data: bytes) -> str:
    import _socket

    return _socket.inet_ntop(family, data)


class Netlink:
    """One netlink socket (NETLINK_ROUTE unless ``protocol`` says otherwise: nbd.py speaks generic netlink over
    the same framing); use as a context manager."""

    def __init__(self, protocol: int = NETLINK_ROUTE) -> None:
        import _socket

        self._sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST, self._seq, 0) + body)
        return self._seq

    def _replies(self, seq: int):  # noqa: ANN202 - yields (type, payload)
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, flags, got, _ = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise NetlinkError(os.strerror(error), error)
                    return
                if kind == NLMSG_DONE:
                    return
                yield kind, payload
                if not flags & NLM_F_MULTI:
                    return

    def request(self, kind: int, body: bytes, flags: int = 0, what: str = "") -> None:
        """Send a request and wait for its ACK; NetlinkError names ``what`` and the kernel's errno text."""
        try:
            for _ in self._replies(self._send(kind, flags | NLM_F_ACK, body)):
                pass
        except NetlinkError as err:
            raise NetlinkError(f"{what}: {err}" if what else str(err), err.errno) from None

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        return [payload for _, payload in self._replies(self._send(kind, NLM_F_DUMP, body))]

    # -- links ---------------------------------------------------------------------------------------------
    def set_link(self, index: int, *, up: bool | None = None, mtu: int = 0, mac: str = "", name: str = "",
                 master: int | None = None, what: str = "") -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if mtu:
            attrs += attr(IFLA_MTU, struct.pack("=I", mtu))
        if mac:
            attrs += attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        if name:
            attrs += attr(IFLA_IFNAME, name.encode() + b"\0")
        if master is not None:
            attrs += attr(IFLA_MASTER, struct.pack("=I", master))
        self.request(RTM_NEWLINK, _IFINFO.pack(0, 0, index, flags, change) + attrs, what=what)

    def link_state(self, index: int) -> tuple[bool, bool]:
        """(administratively up, carrier) of link ``index``. Unlike /sys/class/net/NAME/carrier, netlink reports
        the carrier of a link that is down too."""
        for payload in self.dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            _, _, got, flags, _ = _IFINFO.unpack_from(payload)
            if got == index:
                carrier = parse_attrs(payload, _IFINFO.size).get(IFLA_CARRIER, b"\0")
                return bool(flags & IFF_UP), carrier[:1] == b"\1"
        raise NetlinkError(f"no network link with index {index}", 19)   # ENODEV

    def add_link(self, name: str, kind: str, *, parent: int = 0, data: bytes = b"") -> None:
        info = attr(IFLA_INFO_KIND, kind.encode()) + (attr(IFLA_INFO_DATA, data) if data else b"")
        attrs = attr(IFLA_IFNAME, name.encode() + b"\0") + attr(IFLA_LINKINFO, info)
        if parent:
            attrs += attr(IFLA_LINK, struct.pack("=I", parent))
        self.request(RTM_NEWLINK, _IFINFO.pack(0, 0, 0, 0, 0) + attrs, NLM_F_CREATE | NLM_F_EXCL,
                     what=f"creating {kind} {name}")

    def add_vlan(self, name: str, parent: int, vid: int) -> None:
        self.add_link(name, "vlan", parent=parent, data=attr(IFLA_VLAN_ID, struct.pack("=H", vid)))

    def ra_flags(self, index: int) -> tuple[bool, bool]:
        """(managed, other-config) from the last router advertisement seen on the link (the kernel keeps them)."""
        for payload in self.dump(RTM_GETLINK, _IFINFO.pack(AF_INET6, 0, 0, 0, 0)):
            if _IFINFO.unpack_from(payload)[2] != index:
                continue
            info = parse_attrs(parse_attrs(payload, _IFINFO.size).get(IFLA_PROTINFO, b""))
            flags = struct.unpack_from("=I", info[IFLA_INET6_FLAGS])[0] if IFLA_INET6_FLAGS in info else 0
            return bool(flags & IF_RA_MANAGED), bool(flags & IF_RA_OTHERCONF)
        return False, False

    # -- addresses and routes ------------------------------------------------------------------------------
    def add_address(self, index: int, address: str, prefix: int, *, flags: int = 0, what: str = "") -> None:
        family, packed = pack_address(address)
        attrs = attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        if flags:
            attrs += attr(IFA_FLAGS, struct.pack("=I", flags))
        self.request(RTM_NEWADDR, _IFADDR.pack(family, prefix, flags & 0xFF, RT_SCOPE_UNIVERSE, index) + attrs,
                     NLM_F_CREATE | NLM_F_REPLACE, what=what or f"adding {address}/{prefix}")

    def addresses(self, index: int = 0, family: int = 0) -> list[tuple[str, int, int, int]]:
        """(address, prefix, scope, flags) of every address (on link ``index`` when given)."""
        found = []
        for payload in self.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0)):
            fam, prefix, flags8, scope, link = _IFADDR.unpack_from(payload)
            if index and link != index:
                continue
            attrs = parse_attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None:
                continue
            flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0] if IFA_FLAGS in attrs else flags8
            found.append((unpack_address(fam, raw), prefix, scope, flags))
        return found

    def add_route(self, destination: str, prefix: int, gateway: str = "", *, index: int = 0, metric: int = 0,
                  what: str = "") -> None:
        family, packed = pack_address(gateway or destination)
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        attrs = attr(RTA_DST, pack_address(destination)[1]) if prefix else b""
        if gateway:
            attrs += attr(RTA_GATEWAY, packed)
        if index:
            attrs += attr(RTA_OIF, struct.pack("=I", index))
        if metric:
            attrs += attr(RTA_PRIORITY, struct.pack("=I", metric))
        body = _RTMSG.pack(family, prefix, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0) + attrs
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_REPLACE,
                     what=what or f"adding the route {destination}/{prefix} via {gateway or 'the link'}")

    def routes(self, family: int) -> list[tuple[str, int, str, int, int]]:
        """(destination, prefix, gateway or "", output link, protocol) of each route in the main table."""
        found = []
        for payload in self.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fields = _RTMSG.unpack_from(payload)
            if fields[4] != RT_TABLE_MAIN:
                continue
            attrs = parse_attrs(payload, _RTMSG.size)
            destination = unpack_address(family, attrs[RTA_DST]) if RTA_DST in attrs else ""
            gateway = unpack_address(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else ""
            oif = struct.unpack_from("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            found.append((destination, fields[1], gateway, oif, fields[5]))
        return found
