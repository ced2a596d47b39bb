"""A tiny DHCP client for the PXE tests: send one DHCPDISCOVER the way a PXE ROM or iPXE would, print every offer.

Runs as root, as a script inside the client network namespace (``ip netns exec``). Unlike a real client it does not take
the first offer: it collects all of them for a while, so a test can see both the site's DHCP server's offer and
our proxy-DHCP answer. Prints one JSON list of offers on stdout.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import time

MAGIC = b"\x63\x82\x53\x63"


def discover(mac: bytes, xid: int, *, arch: int | None, vendor: str | None, user_class: str | None,
             ciaddr: bytes = bytes(4), boot_item: int | None = None) -> bytes:
    """A DHCPDISCOVER; with ``boot_item`` the PXE boot-server DHCPREQUEST a ROM unicasts to port 4011."""
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0 if boot_item is not None else 0x8000,
                         ciaddr, bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), bytes(64), bytes(128))
    options = bytearray(MAGIC)
    options += bytes([53, 1, 3 if boot_item is not None else 1])
    if boot_item is not None:                                     # PXE_BOOT_ITEM: type, layer 0
        options += bytes([43, 7, 71, 4]) + struct.pack("!HH", boot_item, 0) + bytes([255])
    options += bytes([55, 7, 1, 3, 43, 54, 60, 66, 67])
    if arch is not None:
        options += bytes([93, 2]) + struct.pack("!H", arch)
        options += bytes([94, 3, 1, 2, 1])                       # client NII: UNDI 2.1
        options += bytes([97, 17, 0]) + bytes(range(16))          # client machine UUID
    if vendor:
        options += bytes([60, len(vendor)]) + vendor.encode()
    if user_class:
        options += bytes([77, len(user_class)]) + user_class.encode()
    options += bytes([255])
    return header + bytes(options)


def parse(packet: bytes) -> dict[str, object] | None:
    if len(packet) < 240 or packet[236:240] != MAGIC:
        return None
    xid, = struct.unpack("!I", packet[4:8])
    options: dict[int, bytes] = {}
    i = 240
    while i < len(packet):
        code = packet[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = packet[i + 1]
        options[code] = options.get(code, b"") + packet[i + 2:i + 2 + length]
        i += 2 + length
    return {
        "xid": xid,
        "type": options.get(53, b"\0")[0],
        "yiaddr": str(ipaddress.IPv4Address(packet[16:20])),
        "siaddr": str(ipaddress.IPv4Address(packet[20:24])),
        "file": packet[108:236].split(b"\0", 1)[0].decode("latin-1"),
        "server_id": str(ipaddress.IPv4Address(options[54])) if 54 in options else None,
        "vendor_class": options.get(60, b"").decode("latin-1"),
        "bootfile_option": options.get(67, b"").split(b"\0", 1)[0].decode("latin-1"),
        "pxe_options": options.get(43, b"").hex(),
    }


def own_address(interface: str) -> str:
    import fcntl
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", interface.encode()))  # SIOCGIFADDR
    return socket.inet_ntoa(packed[20:24])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interface", required=True)
    parser.add_argument("--arch", type=int)
    parser.add_argument("--vendor")
    parser.add_argument("--user-class")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds to collect offers (a server pings an address ~3 s before offering it)")
    parser.add_argument("--count", type=int, default=0, help="stop as soon as this many answers came in")
    parser.add_argument("--boot-server", help="ask this PXE boot server (port 4011) instead of broadcasting")
    parser.add_argument("--boot-item", type=int, default=0, help="boot item type to request from it")
    args = parser.parse_args()
    mac = bytes.fromhex(open(f"/sys/class/net/{args.interface}/address").read().strip().replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.interface.encode())
    sock.bind(("0.0.0.0", 68))
    # Receive on a packet socket, as real DHCP clients do: the IP layer of an interface without an address
    # does not reliably deliver broadcast replies to a UDP socket.
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    raw.bind((args.interface, 0))
    target = ("255.255.255.255", 67)
    ciaddr = bytes(4)
    if args.boot_server:
        target = (args.boot_server, 4011)
        ciaddr = socket.inet_aton(own_address(args.interface))
    packet = discover(mac, xid, arch=args.arch, vendor=args.vendor, user_class=args.user_class, ciaddr=ciaddr,
                      boot_item=args.boot_item if args.boot_server else None)
    offers: list[dict[str, object]] = []
    deadline = time.monotonic() + args.wait
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:          # resend once a second, as real clients do
            sock.sendto(packet, target)
            next_send = time.monotonic() + 1.0
        raw.settimeout(max(0.05, min(next_send, deadline) - time.monotonic()))
        try:
            frame = raw.recv(65535)
        except TimeoutError:
            continue
        header = (frame[0] & 0x0F) * 4
        if len(frame) < header + 8 or frame[9] != 17 or struct.unpack("!H", frame[header + 2:header + 4])[0] != 68:
            continue
        offer = parse(frame[header + 8:])
        if offer and offer["xid"] == xid and offer["type"] in (2, 5) and offer not in offers:
            offers.append(offer)
            if args.count and len(offers) >= args.count:
                break
    print(json.dumps(offers))


if __name__ == "__main__":
    main()
