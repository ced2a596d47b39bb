"""Bring up the network a node boots from, as the kernel command line describes it (netcmd.py, dracut syntax).

In order: wait for the NICs the options name (``ifname=`` renames them as they appear), build bonds (netlink +
the bonding driver's sysfs options) and VLANs, choose the boot interface, set MTUs and MAC addresses, bring the
links up and wait for carrier, then configure each interface: static IPv4/IPv6, DHCPv4 (dhcp.py), DHCPv6
(dhcp6.py), SLAAC (the kernel, watched over netlink), plus ``rd.route=`` routes. The result is a
:class:`NetResult` that netstate.py records for the booted system.

Links are read from /sys/class/net; every change goes through rtnetlink (netlink.py). The boot interface is
``bootdev=``, else the NIC with ``BOOTIF=``'s MAC (the one iPXE booted from), else ``layerboot.interface=``, else
the only interface an ``ip=`` names, else the NIC with ``layerboot.node=``'s MAC, else the first link with carrier;
a NIC that is a bond slave stands for its bond, and a device with exactly one configured VLAN on it for that VLAN.
"""

from __future__ import annotations

import os
import time

from .console import StageError, debug, say, spawn
from .dhcp import Lease
from .netcmd import IfaceConfig, NetPlan
from .netlink import IFF_UP, Netlink, NetlinkError
from .record import Record

SYS_NET = "/sys/class/net"
ARPHRD_ETHER = 1
MODULES = {"vlan": "8021q", "bond": "bonding"}


class NetResult(Record):
    """What the net stage did: the boot interface, the node's MAC, every configured interface's leases."""

    boot_interface: str
    node_mac: str                                   # BOOTIF's MAC, else the boot NIC's own (permanent) MAC
    reason: str = ""                                # why that interface: "BOOTIF 52:54:...", "first with carrier"
    leases: tuple[tuple[str, Lease], ...] = ()       # (interface, lease), boot interface first
    hostname: str = ""                              # from ip= first, else the boot interface's DHCP
    links: tuple[str, ...] = ()                     # every interface stage1 configured or built


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _devtype(name: str) -> str:
    try:
        for line in _read(f"{SYS_NET}/{name}/uevent").splitlines():
            if line.startswith("DEVTYPE="):
                return line[len("DEVTYPE="):]
    except OSError:
        pass
    return ""


def ethernet_interfaces() -> list[str]:
    """Physical Ethernet NICs (and veth pairs in tests): ARPHRD_ETHER without a DEVTYPE (vlan, bond, bridge)."""
    names = []
    for name in sorted(os.listdir(SYS_NET)):
        try:
            if name != "lo" and int(_read(f"{SYS_NET}/{name}/type")) == ARPHRD_ETHER and not _devtype(name):
                names.append(name)
        except (OSError, ValueError):
            continue
    return names


def mac_of(name: str) -> str:
    return _read(f"{SYS_NET}/{name}/address").lower()


def permanent_mac(name: str) -> str:
    """The NIC's own MAC even while a bond has given it another (bonding_slave/perm_hwaddr)."""
    try:
        return _read(f"{SYS_NET}/{name}/bonding_slave/perm_hwaddr").lower()
    except OSError:
        return mac_of(name)


def ifindex(name: str) -> int:
    try:
        return int(_read(f"{SYS_NET}/{name}/ifindex"))
    except (OSError, ValueError):
        raise StageError(f"network interface {name} does not exist") from None


def has_carrier(name: str) -> bool:
    try:
        return _read(f"{SYS_NET}/{name}/carrier") == "1"
    except OSError:   # reading carrier of a down link fails with EINVAL
        return False


def operstate_up(name: str) -> bool:
    try:
        return _read(f"{SYS_NET}/{name}/operstate") in ("up", "unknown")
    except OSError:
        return False


def master_of(name: str) -> str:
    try:
        return os.path.basename(os.readlink(f"{SYS_NET}/{name}/master"))
    except OSError:
        return ""


def write_sys(path: str, value: str, what: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as err:
        raise StageError(f"{what}: writing {value!r} to {path}: {err.strerror}") from None


def load_module(kind: str, loaded: set[str]) -> None:
    """8021q for VLANs, bonding for bonds (without its default bond0: max_bonds=0); built-in is fine too."""
    module = MODULES[kind]
    if module in loaded or os.path.isdir(f"/sys/module/{module}"):
        return
    params = ["max_bonds=0"] if module == "bonding" else []
    code, output = spawn(["/bin/busybox", "modprobe", module, *params], quiet=True)
    if code and not os.path.isdir(f"/sys/module/{module}"):
        raise StageError(f"loading the {module} kernel module for a {kind} failed: {output or code}")
    loaded.add(module)


def _wait(predicate, timeout: float, interval: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class Bringup:
    """One run of the net stage: the plan, the options it needs and the state it builds up."""

    def __init__(self, plan: NetPlan, *, interface: str = "", node: str = "", timeout: float = 10.0) -> None:
        self.plan, self.interface, self.node, self.timeout = plan, interface, node, timeout
        self.nl = Netlink()
        self.loaded: set[str] = set()
        self.built: list[str] = []
        self.queue_active: set[str] = set()   # links that had carrier when brought up (see link_ready)

    def close(self) -> None:
        self.nl.close()

    def wait_for(self, name: str) -> float:
        """rd.net.timeout.NAME, else layerboot.timeout (the carrier wait also answers to dracut's ``ifup``)."""
        if name == "carrier":
            return self.plan.timeout("carrier", self.plan.timeout("ifup", self.timeout))
        return self.plan.timeout(name, self.timeout)

    # -- links up and ready to send -----------------------------------------------------------------------------
    def link_up(self, name: str, *, mtu: int = 0, what: str = "") -> None:
        """Bring ``name`` up, noting whether it already had carrier while down (see :meth:`link_ready`)."""
        index = ifindex(name)
        was_up, carrier = self.nl.link_state(index)
        self.nl.set_link(index, mtu=mtu, up=True, what=what or f"bringing {name} up")
        if not was_up and carrier:
            self.queue_active.add(name)

    def link_ready(self, name: str) -> bool:
        """Carrier, and the link's transmit queue is active, so a DHCP request is not silently dropped.

        The kernel activates the queue in one of two places. A link with carrier when it is brought up gets it at
        once (dev_open), which is what a virtio NIC does: its carrier comes on at probe. A link whose carrier
        comes later gets it from the link watcher, right away for that event; the same watcher sets operstate
        "up". Waiting for operstate in the first case too costs up to a second: a carrier event on a link that is
        still down is not urgent, and the watcher handles such events at most once a second. The 1 GiB streamed
        boot waited 0.85 s for it under TCG (bench/bench_boot.py, layerboot.debug). IPv6 waits for its link-local
        address on its own (net6.py)."""
        if not has_carrier(name):
            self.queue_active.discard(name)   # a driver that drops carrier when opened: the watcher decides
            return False
        return name in self.queue_active or operstate_up(name)

    # -- 1. the NICs -----------------------------------------------------------------------------------------
    def physical_names(self) -> set[str]:
        """Names the options expect to be NICs (not bonds or VLANs stage1 builds)."""
        virtual = {b.name for b in self.plan.bonds} | {v.name for v in self.plan.vlans}
        wanted = {s for b in self.plan.bonds for s in b.slaves} | {v.parent for v in self.plan.vlans}
        wanted |= {c.device for c in self.plan.configs if c.device}
        wanted |= {n for n in (self.interface, self.plan.bootdev) if n}
        return wanted - virtual

    def rename(self, name: str, mac: str) -> None:
        """ifname=: give the NIC with ``mac`` the name ``name`` (moving a NIC that holds the name aside)."""
        current = next((n for n in ethernet_interfaces() if mac_of(n) == mac), "")
        if not current or current == name:
            return
        if os.path.exists(f"{SYS_NET}/{name}"):
            self.nl.set_link(ifindex(name), up=False, what=f"ifname={name}:{mac}: taking {name} down")
            self.nl.set_link(ifindex(name), name=f"lbrn{ifindex(name)}", what=f"ifname={name}:{mac}: moving "
                             f"{name} aside")
        self.nl.set_link(ifindex(current), up=False, what=f"ifname={name}:{mac}: taking {current} down")
        self.nl.set_link(ifindex(current), name=name, what=f"ifname={name}:{mac}: renaming {current}")
        say(f"{current} ({mac}) renamed {name}")

    def wait_for_nics(self) -> None:
        wanted_names = self.physical_names()
        wanted_macs = {mac for _, mac in self.plan.names} | ({self.plan.bootif} if self.plan.bootif else set())
        timeout = self.wait_for("iflink")
        renamed: set[str] = set()

        def ready() -> bool:
            names = ethernet_interfaces()
            macs = {permanent_mac(n) for n in names}
            for name, mac in self.plan.names:
                if name not in renamed and mac in macs:
                    self.rename(name, mac)
                    renamed.add(name)
            names = ethernet_interfaces()
            if not names:
                return False
            return wanted_names <= set(names) and wanted_macs <= {permanent_mac(n) for n in names}

        if not _wait(ready, timeout):
            names = ethernet_interfaces()
            missing = sorted(wanted_names - set(names)) + sorted(
                f"with MAC {m}" + (" (BOOTIF)" if m == self.plan.bootif else "")
                for m in wanted_macs - {permanent_mac(n) for n in names})
            what = ", ".join(missing) if missing else "(any Ethernet)"
            raise StageError(f"no network interface {what} appeared within {timeout:g}s "
                             f"(found: {', '.join(names) or 'none'})")

    # -- 2. bonds and VLANs ------------------------------------------------------------------------------------
    def build_bond(self, bond) -> None:  # noqa: ANN001 - netcmd.Bond
        load_module("bond", self.loaded)
        if os.path.isdir(f"{SYS_NET}/{bond.name}/bonding"):
            self.nl.set_link(ifindex(bond.name), up=False, what=f"bond {bond.name}")
        else:
            self.nl.add_link(bond.name, "bond")
        base = f"{SYS_NET}/{bond.name}/bonding"
        for key, value in bond.options:
            for item in (value.split(",") if key == "arp_ip_target" else [value]):
                write_sys(f"{base}/{key}", f"+{item}" if key == "arp_ip_target" else item,
                          f"bond {bond.name} option {key}")
        # The BOOTIF NIC first: the bond takes its first slave's MAC, which DHCP reservations know.
        slaves = sorted(bond.slaves, key=lambda s: permanent_mac(s) != self.plan.bootif)
        for slave in slaves:
            index = ifindex(slave)
            self.nl.set_link(index, up=False, what=f"bond {bond.name}: taking {slave} down")
            self.nl.set_link(index, master=ifindex(bond.name), what=f"bond {bond.name}: enslaving {slave}")
        self.nl.set_link(ifindex(bond.name), mtu=bond.mtu, up=True, what=f"bond {bond.name}: bringing it up")
        for slave in slaves:
            self.nl.set_link(ifindex(slave), up=True, what=f"bond {bond.name}: bringing {slave} up")
        self.built.append(bond.name)
        say(f"{bond.name}: bond ({bond.mode}) of {', '.join(slaves)}")

    def build_vlan(self, vlan) -> None:  # noqa: ANN001 - netcmd.Vlan
        load_module("vlan", self.loaded)
        parent = ifindex(vlan.parent)
        self.nl.set_link(parent, up=True, what=f"VLAN {vlan.name}: bringing {vlan.parent} up")
        if not os.path.exists(f"{SYS_NET}/{vlan.name}"):
            self.nl.add_vlan(vlan.name, parent, vlan.vid)
        self.built.append(vlan.name)
        say(f"{vlan.name}: VLAN {vlan.vid} on {vlan.parent}")

    # -- 3. the boot interface -----------------------------------------------------------------------------------
    def top(self, name: str) -> str:
        """The device configured for a NIC: its bond if enslaved, then the one configured VLAN on it, if any."""
        for bond in self.plan.bonds:
            if name in bond.slaves:
                name = bond.name
        if self.plan.config_for(name) is None:
            vlans = [v.name for v in self.plan.vlans if v.parent == name and self.plan.config_for(v.name)]
            if len(vlans) == 1:
                return vlans[0]
        return name

    def with_carrier(self) -> str:
        """The first NIC (by name) with carrier, after bringing every NIC up; those it brought up that no option
        uses (not a bond slave, VLAN parent or named interface) go back down."""
        names = ethernet_interfaces()
        keep = self.physical_names() | {n for n in names if int(_read(f"{SYS_NET}/{n}/flags"), 16) & IFF_UP}
        for name in names:
            self.link_up(name)
        timeout = self.wait_for("carrier")
        found: list[str] = []

        def any_carrier() -> bool:
            found[:] = [n for n in names if self.link_ready(n)]
            return bool(found)

        if not _wait(any_carrier, timeout):
            raise StageError(f"no network interface has a link (carrier) after {timeout:g}s "
                             f"(tried: {', '.join(names) or 'none'})")
        for name in names:
            if name != found[0] and name not in keep:
                self.nl.set_link(ifindex(name), up=False, what=f"taking {name} down")
        return found[0]

    def boot_interface(self) -> tuple[str, str, str]:
        """(interface to configure as the boot interface, the NIC it runs on, why it was chosen)."""
        plan = self.plan
        names = ethernet_interfaces()
        if plan.bootdev:
            return plan.bootdev, plan.bootdev, "bootdev="
        if plan.bootif:
            nic = next((n for n in names if permanent_mac(n) == plan.bootif), "")
            if not nic:
                raise StageError(f"no network interface has the boot MAC {plan.bootif} (BOOTIF)")
            return self.top(nic), nic, f"BOOTIF {plan.bootif}" + (f" on {nic}" if self.top(nic) != nic else "")
        if self.interface:
            return self.interface, self.interface, "layerboot.interface="
        named = [c.device for c in plan.configs if c.device]
        if len(named) == 1 and not plan.config_for(""):
            return named[0], named[0], "the interface ip= names"
        if self.node:
            nic = next((n for n in names if permanent_mac(n) == self.node), "")
            if nic:
                return self.top(nic), nic, f"layerboot.node={self.node}"
        nic = self.with_carrier()
        return self.top(nic), nic, "first with carrier"

    # -- 4. addresses ----------------------------------------------------------------------------------------
    def prepare(self, config: IfaceConfig) -> None:
        """MTU and MAC from ip=, then the link up."""
        index = ifindex(config.device)
        parent = next((v.parent for v in self.plan.vlans if v.name == config.device), "")
        if parent and config.mtu > int(_read(f"{SYS_NET}/{parent}/mtu")):   # a VLAN cannot outgrow its parent
            self.nl.set_link(ifindex(parent), mtu=config.mtu, what=f"{parent}: setting MTU {config.mtu} for "
                             f"{config.device}")
        if config.mac:
            self.nl.set_link(index, up=False, what=f"{config.device}: setting MAC {config.mac}")
            self.nl.set_link(index, mac=config.mac, what=f"{config.device}: setting MAC {config.mac}")
        self.link_up(config.device, mtu=config.mtu, what=f"{config.device}: setting MTU {config.mtu}"
                     if config.mtu else f"bringing {config.device} up")

    def wait_carrier(self, name: str) -> None:
        timeout = self.wait_for("carrier")
        if not _wait(lambda: self.link_ready(name), timeout):
            raise StageError(f"{name} has no link (no carrier) after {timeout:g}s")

    def configure_v4(self, config: IfaceConfig, metric: int) -> Lease | None:
        name, index = config.device, ifindex(config.device)
        if config.v4 == "static":
            lease = Lease(config.address4, config.prefix4, router=config.gateway4, dns=config.dns,
                          hostname=config.hostname, source="static")
        elif config.v4 == "dhcp":
            existing = [a for a in self.nl.addresses(index, 2) if a[2] == 0]
            if existing and metric == 0:
                debug(f"{name} already has {existing[0][0]}/{existing[0][1]}; no DHCP")
                return Lease(existing[0][0], existing[0][1], source="existing")
            from .dhcp import request_lease

            total = self.plan.timeout("dhcp", max(self.timeout, 4.0) * 3)
            lease = None
            for attempt in range(self.plan.dhcp_retry):
                try:
                    lease = request_lease(name, mac_of(name), total=total)
                    break
                except StageError:
                    if attempt + 1 == self.plan.dhcp_retry:
                        raise
                    say(f"no DHCP answer on {name} within {total:g}s; trying again")
            assert lease is not None
            if lease.mtu and not config.mtu:
                self.nl.set_link(index, mtu=lease.mtu, what=f"{name}: setting the DHCP MTU {lease.mtu}")
        else:
            return None
        self.nl.add_address(index, lease.address, lease.prefix, what=f"{name}: adding {lease}")
        if lease.router:
            self.add_default(lease.router, index, metric, name)
        return lease

    def add_default(self, gateway: str, index: int, metric: int, name: str) -> None:
        try:
            self.nl.add_route("0.0.0.0" if ":" not in gateway else "::", 0, gateway, index=index, metric=metric)
        except NetlinkError as err:
            raise StageError(f"{name}: cannot add the default route via {gateway}: {err}") from None

    def add_routes(self) -> None:
        for route in self.plan.routes:
            destination, _, prefix = route.destination.partition("/")
            index = ifindex(route.device) if route.device else 0
            try:
                self.nl.add_route(destination, int(prefix), route.gateway, index=index)
            except NetlinkError as err:
                raise StageError(f"rd.route={route.destination}:{route.gateway}: {err}") from None
            say(f"route {route.destination} via {route.gateway}{' dev ' + route.device if route.device else ''}")


def bring_up(plan: NetPlan, *, interface: str = "", node: str = "", timeout: float = 10.0) -> NetResult:
    """Run the whole net stage; StageError (one line) when the boot network cannot come up."""
    net6 = None
    if any(c.v6 for c in plan.configs):   # net6.py (and dhcp6.py) only when an ip= asks for IPv6
        from . import net6

        net6.prepare(ethernet_interfaces())   # before any link comes up; "default" covers bonds and VLANs
    run = Bringup(plan, interface=interface, node=node, timeout=timeout)
    try:
        run.wait_for_nics()
        for bond in plan.bonds:
            run.build_bond(bond)
        for vlan in plan.vlans:
            run.build_vlan(vlan)
        boot, nic, reason = run.boot_interface()
        if not os.path.exists(f"{SYS_NET}/{boot}"):
            raise StageError(f"the boot interface {boot} does not exist (found: {', '.join(os.listdir(SYS_NET))})")
        configs = [c for c in plan.configs if c.device and c.device != boot]
        own = plan.config_for(boot) or plan.config_for("") or IfaceConfig(v4="dhcp")
        configs.insert(0, IfaceConfig(**{**{f: getattr(own, f) for f in IfaceConfig._fields}, "device": boot}))
        if net6 is not None:
            net6.prepare([c.device for c in configs if c.v6])
        for config in configs:
            run.prepare(config)
        for config in configs:
            run.wait_carrier(config.device)
        debug(f"links up with carrier: {', '.join(c.device for c in configs)}")
        leases: list[tuple[str, Lease]] = []
        for position, config in enumerate(configs):
            metric = 0 if position == 0 else 100 * position
            lease = run.configure_v4(config, metric)
            if lease is not None:
                leases.append((config.device, lease))
                say(f"{config.device} {mac_of(config.device)}: {lease}")
            lease6 = net6.configure(run, config, metric) if net6 is not None else None
            if lease6 is not None:
                leases.append((config.device, lease6))
                say(f"{config.device}: {lease6}")
        run.add_routes()
        if net6 is not None:
            net6.check_duplicates(run, configs)
        hostname = own.hostname or next((lease.hostname for dev, lease in leases if dev == boot and lease.hostname),
                                        "")
        node_mac = plan.bootif or permanent_mac(nic)
        links = tuple(dict.fromkeys([*run.built, *(c.device for c in configs)]))
        return NetResult(boot, node_mac, reason, tuple(leases), hostname, links)
    except NetlinkError as err:
        raise StageError(str(err)) from None
    finally:
        run.close()


def interface_record(name: str, leases: list[Lease]) -> dict:
    """One interface as net.json shows it: kind, MAC, MTU, bond/VLAN details, global addresses, gateways."""
    from .netlink import AF_INET, AF_INET6

    kind = _devtype(name) or "ether"
    record: dict = {"name": name, "kind": kind, "mac": mac_of(name), "mtu": int(_read(f"{SYS_NET}/{name}/mtu"))}
    if kind == "bond":
        record["slaves"] = _read(f"{SYS_NET}/{name}/bonding/slaves").split()
        record["mode"] = _read(f"{SYS_NET}/{name}/bonding/mode").split()[0]
    elif kind == "vlan":
        record["parent"] = next((e[len("lower_"):] for e in os.listdir(f"{SYS_NET}/{name}")
                                 if e.startswith("lower_")), "")
    elif master_of(name):
        record["master"] = master_of(name)
    index = ifindex(name)
    with Netlink() as nl:
        record["addresses"] = [f"{a}/{p}" for a, p, scope, _ in nl.addresses(index) if scope == 0]
        for family, key in ((AF_INET, "gateway"), (AF_INET6, "gateway6")):
            record[key] = next((r[2] for r in nl.routes(family) if r[1] == 0 and r[2] and r[3] == index), "")
    record["leases"] = [{"source": lease.source, "address": lease.address, "prefix": lease.prefix,
                         "router": lease.router, "server": lease.server, "lifetime": lease.lifetime}
                        for lease in leases]
    return record
