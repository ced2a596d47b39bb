"""One measured run of one way to configure links from Python, for bench/bench_netlink.py (host and QEMU guest).

    python3.11 -S -I -B netlink_ops.py APPROACH RUN NIC STAGE1_DIR SITE_DIR [--vlan] [--bond]

APPROACH is one of
  stage1    layerboot's own rtnetlink (initrd/stage1/netlink.py; imports the whole net stage)
  pyroute2  pyroute2's IPRoute (from SITE_DIR)
  busybox   a ``busybox ip`` child per step; the bond from sysfs (busybox ip cannot create one)
  ioctl     the SIOCSIF*/SIOCADDRT ioctls stage1 used before (IPv4 only: no VLAN, bond or IPv6)

The steps: NIC up, its MTU, a VLAN on it (``--vlan``), an IPv4 and an IPv6 address, IPv4 and IPv6 default
routes, reading the addresses back, a bond in active-backup mode (``--bond``). Names and addresses carry APPROACH
and RUN so runs in one kernel never collide. Prints one JSON line: import seconds, seconds per step (None where
the approach cannot do the step), modules the import added.
"""

import os
import sys
import time

STARTED = time.perf_counter()
APPROACHES = ("stage1", "pyroute2", "busybox", "ioctl")


def names(approach: str, run: int) -> dict:
    a = APPROACHES.index(approach) + 1
    return {"vid": 100 * run + a, "vlan": f"v{run}{approach[:2]}", "bond": f"b{run}{approach[:2]}",
            "addr4": f"10.{run}.{a}.5", "gw4": f"10.{run}.{a}.1", "addr6": f"fd{run:02x}:{a}::5",
            "gw6": f"fd{run:02x}:{a}::1"}


def busybox(*args: str) -> None:
    pid = os.posix_spawn("/bin/busybox", ["busybox", *args], os.environ)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise OSError(f"busybox {' '.join(args)} failed")


def sysfs(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def steps_stage1(nic: str, n: dict, vlan: bool, bond: bool) -> dict:
    from stage1.net import ifindex
    from stage1.netlink import Netlink

    nl = Netlink()
    dev = n["vlan"] if vlan else nic
    return {
        "up": lambda: nl.set_link(ifindex(nic), up=True),
        "mtu": lambda: nl.set_link(ifindex(nic), mtu=1400),
        "vlan": (lambda: (nl.add_vlan(n["vlan"], ifindex(nic), n["vid"]), nl.set_link(ifindex(dev), up=True)))
        if vlan else None,
        "addr4": lambda: nl.add_address(ifindex(dev), n["addr4"], 24),
        "addr6": lambda: nl.add_address(ifindex(dev), n["addr6"], 64),
        "route4": lambda: nl.add_route("0.0.0.0", 0, n["gw4"], index=ifindex(dev)),
        "route6": lambda: nl.add_route("::", 0, n["gw6"], index=ifindex(dev)),
        "dump": lambda: nl.addresses(ifindex(dev)),
        "bond": (lambda: (nl.add_link(n["bond"], "bond"),
                          sysfs(f"/sys/class/net/{n['bond']}/bonding/mode", "active-backup"),
                          nl.set_link(ifindex(n["bond"]), up=True))) if bond else None,
    }


def steps_pyroute2(nic: str, n: dict, vlan: bool, bond: bool) -> dict:
    from pyroute2 import IPRoute

    ip = IPRoute()
    index = lambda name: ip.link_lookup(ifname=name)[0]  # noqa: E731
    dev = n["vlan"] if vlan else nic
    return {
        "up": lambda: ip.link("set", index=index(nic), state="up"),
        "mtu": lambda: ip.link("set", index=index(nic), mtu=1400),
        "vlan": (lambda: (ip.link("add", ifname=dev, kind="vlan", link=index(nic), vlan_id=n["vid"]),
                          ip.link("set", index=index(dev), state="up"))) if vlan else None,
        "addr4": lambda: ip.addr("add", index=index(dev), address=n["addr4"], prefixlen=24),
        "addr6": lambda: ip.addr("add", index=index(dev), address=n["addr6"], prefixlen=64),
        "route4": lambda: ip.route("replace", dst="0.0.0.0/0", gateway=n["gw4"], oif=index(dev)),
        "route6": lambda: ip.route("replace", dst="::/0", gateway=n["gw6"], oif=index(dev), family=10),
        "dump": lambda: list(ip.get_addr(index=index(dev))),
        "bond": (lambda: (ip.link("add", ifname=n["bond"], kind="bond", bond_mode=1),
                          ip.link("set", index=index(n["bond"]), state="up"))) if bond else None,
    }


def steps_busybox(nic: str, n: dict, vlan: bool, bond: bool) -> dict:
    dev = n["vlan"] if vlan else nic
    return {
        "up": lambda: busybox("ip", "link", "set", nic, "up"),
        "mtu": lambda: busybox("ip", "link", "set", nic, "mtu", "1400"),
        "vlan": (lambda: (busybox("ip", "link", "add", "link", nic, "name", dev, "type", "vlan", "id",
                                  str(n["vid"])), busybox("ip", "link", "set", dev, "up"))) if vlan else None,
        "addr4": lambda: busybox("ip", "addr", "add", f"{n['addr4']}/24", "dev", dev),
        "addr6": lambda: busybox("ip", "addr", "add", f"{n['addr6']}/64", "dev", dev),
        "route4": lambda: busybox("ip", "route", "replace", "default", "via", n["gw4"], "dev", dev),
        "route6": lambda: busybox("ip", "-6", "route", "replace", "default", "via", n["gw6"], "dev", dev),
        "dump": lambda: busybox("ip", "addr", "show", "dev", dev),
        "bond": (lambda: (sysfs("/sys/class/net/bonding_masters", f"+{n['bond']}"),
                          sysfs(f"/sys/class/net/{n['bond']}/bonding/mode", "active-backup"),
                          busybox("ip", "link", "set", n["bond"], "up"))) if bond else None,
    }


def steps_ioctl(nic: str, n: dict, vlan: bool, bond: bool) -> dict:
    import _socket
    import fcntl
    import struct

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)

    def ifreq(payload: bytes = b"") -> bytes:
        return struct.pack("16s", nic.encode()) + payload.ljust(24, b"\0")

    def sockaddr(address: str) -> bytes:
        return struct.pack("=H2s4s8s", _socket.AF_INET, b"\0\0", _socket.inet_aton(address), b"")

    def up() -> None:
        flags = struct.unpack_from("H", fcntl.ioctl(sock.fileno(), 0x8913, ifreq()), 16)[0]
        fcntl.ioctl(sock.fileno(), 0x8914, ifreq(struct.pack("H", flags | 1)))

    def route() -> None:
        zero = sockaddr("0.0.0.0")
        fcntl.ioctl(sock.fileno(), 0x890B, struct.pack("@L16s16s16sHhLPhPLLH", 0, zero, sockaddr(n["gw4"]), zero,
                                                       3, 0, 0, 0, 0, 0, 0, 0, 0))

    return {
        "up": up,
        "mtu": lambda: fcntl.ioctl(sock.fileno(), 0x8922, ifreq(struct.pack("i", 1400))),
        "vlan": None,
        "addr4": lambda: (fcntl.ioctl(sock.fileno(), 0x8916, ifreq(sockaddr(n["addr4"]))),
                          fcntl.ioctl(sock.fileno(), 0x891C, ifreq(sockaddr("255.255.255.0")))),
        "addr6": None, "route4": route, "route6": None, "dump": lambda: fcntl.ioctl(sock.fileno(), 0x8915, ifreq()),
        "bond": None,
    }


def main() -> None:
    approach, run, nic, stage1_dir, site_dir = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
    vlan, bond = "--vlan" in sys.argv, "--bond" in sys.argv
    sys.path[:0] = [stage1_dir, site_dir]
    before = set(sys.modules)
    builder = {"stage1": steps_stage1, "pyroute2": steps_pyroute2, "busybox": steps_busybox,
               "ioctl": steps_ioctl}[approach]
    t0 = time.perf_counter()
    if approach == "stage1":
        import stage1.dhcp6, stage1.net, stage1.net6, stage1.netcmd, stage1.netlink, stage1.netstate  # noqa: F401, E401
    elif approach == "pyroute2":
        import pyroute2  # noqa: F401
    imported = time.perf_counter() - t0
    steps = builder(nic, names(approach, run), vlan, bond)
    timings: dict[str, float | None] = {}
    for name, step in steps.items():
        if step is None:
            timings[name] = None
            continue
        t = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - t, 6)
    print("BENCH " + repr({"approach": approach, "run": run, "import": round(imported, 6), "steps": timings,
                           "modules": len(set(sys.modules) - before),
                           "total": round(time.perf_counter() - STARTED, 6)}).replace("'", '"')
          .replace("None", "null"), flush=True)


if __name__ == "__main__":
    main()
