"""Attach a network block device: the kernel's nbd driver, configured over generic netlink (no nbd-client).

The kernel takes already connected sockets and speaks NBD's transmission phase on them (requests of 28 bytes,
replies of 16 plus the data: linux/nbd.h). stage1 hands it one end of local socket pairs whose other ends the
stream daemon serves (streamd.py), so there is no NBD handshake: the size and flags are given here. Netlink
rather than the NBD_SET_SOCK/NBD_DO_IT ioctls because with netlink the device lives on in the kernel when the
configuring process (PID 1, which execs switch_root) is gone; with the ioctls a thread would have to sit in
NBD_DO_IT for the node's whole life. nbd-client would bring GnuTLS and libnl (8.6 MB of libraries) for these
two requests. Message layouts: linux/genetlink.h, linux/nbd-netlink.h. Nothing happens at import time.
"""

from __future__ import annotations

import struct

from .netlink import Netlink, NetlinkError, attr, parse_attrs

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
NBD_FAMILY, NBD_VERSION = b"nbd\0", 1
NBD_CMD_CONNECT, NBD_CMD_DISCONNECT = 1, 2
(NBD_ATTR_INDEX, NBD_ATTR_SIZE_BYTES, NBD_ATTR_BLOCK_SIZE_BYTES, NBD_ATTR_TIMEOUT, NBD_ATTR_SERVER_FLAGS,
 NBD_ATTR_CLIENT_FLAGS, NBD_ATTR_SOCKETS, NBD_ATTR_DEAD_CONN_TIMEOUT) = range(1, 9)
NBD_SOCK_ITEM, NBD_SOCK_FD = 1, 1
NLA_F_NESTED = 0x8000
NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY, NBD_FLAG_CAN_MULTI_CONN = 1 << 0, 1 << 1, 1 << 8
NBD_REQUEST_MAGIC, NBD_REPLY_MAGIC = 0x25609513, 0x67446698
NBD_CMD_READ, NBD_CMD_DISC = 0, 2
REQUEST = struct.Struct(">IHH8sQI")     # magic, command flags, type, handle, offset, length
REPLY = struct.Struct(">II8s")           # magic, error, handle
_GENL = struct.Struct("=BBH")            # genlmsghdr: cmd, version, reserved


class NbdError(Exception):
    pass


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def _u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=Q", value))


def _family(link: Netlink) -> int:
    """The nbd generic netlink family's id (it is assigned when the module loads)."""
    body = _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr(CTRL_ATTR_FAMILY_NAME, NBD_FAMILY)
    for _, payload in link._replies(link._send(GENL_ID_CTRL, 0, body)):
        family = parse_attrs(payload, _GENL.size).get(CTRL_ATTR_FAMILY_ID)
        if family:
            return struct.unpack_from("=H", family)[0]
    raise NbdError("the kernel has no nbd netlink family (is the nbd module loaded?)")


def connect(sockets: list[int], size: int, *, block_size: int = 4096, read_only: bool = True) -> int:
    """Give the kernel an nbd device served over ``sockets`` (connected fds: one per connection, the kernel
    spreads requests over them); returns its index (``/dev/nbdN``). The caller may close its copies of the fds.

    No request timeout: a read waits as long as the daemon needs (it retries the network itself, streamd.py).
    """
    flags = NBD_FLAG_HAS_FLAGS | (NBD_FLAG_READ_ONLY if read_only else 0)
    if len(sockets) > 1:
        flags |= NBD_FLAG_CAN_MULTI_CONN
    items = b"".join(attr(NBD_SOCK_ITEM | NLA_F_NESTED, _u32(NBD_SOCK_FD, fd)) for fd in sockets)
    with Netlink(NETLINK_GENERIC) as link:
        try:
            family = _family(link)
            body = (_GENL.pack(NBD_CMD_CONNECT, NBD_VERSION, 0) + _u64(NBD_ATTR_SIZE_BYTES, size)
                    + _u64(NBD_ATTR_BLOCK_SIZE_BYTES, block_size) + _u64(NBD_ATTR_SERVER_FLAGS, flags)
                    + attr(NBD_ATTR_SOCKETS | NLA_F_NESTED, items))
            for _, payload in link._replies(link._send(family, 0, body)):
                index = parse_attrs(payload, _GENL.size).get(NBD_ATTR_INDEX)
                if index:
                    return struct.unpack_from("=I", index)[0]
        except NetlinkError as err:
            raise NbdError(f"attaching a network block device: {err}") from None
    raise NbdError("attaching a network block device: the kernel named no device")


def disconnect(index: int) -> None:
    """Tell the kernel to drop ``/dev/nbdN`` (its sockets get NBD_CMD_DISC)."""
    with Netlink(NETLINK_GENERIC) as link:
        try:
            link.request(_family(link), _GENL.pack(NBD_CMD_DISCONNECT, NBD_VERSION, 0) + _u32(NBD_ATTR_INDEX, index),
                         what=f"disconnecting /dev/nbd{index}")
        except NetlinkError as err:
            raise NbdError(str(err)) from None
