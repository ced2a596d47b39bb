"""The boot storm's network: racks of node namespaces, rack mirrors, the origin, one router, shaped uplinks.

Nothing touches the host's own network namespace: every device lives in namespaces named ``<tag>-*``::

    origin (10.77.0.10) --- core bridge ---\
                                           router namespace (forwards; 10.77.R.1 on each bridge)
    mirror R (10.77.R.2) --- rack R bridge -/
    nodes of rack R (10.77.R.10 ...) ------/

* The origin's and each mirror's uplink (``eth0`` egress, i.e. what they send) is shaped with HTB to ``rate``
  (default 1 Gbit/s) plus a netem delay of ``uplink_delay``: a server NIC with some latency.
* Traffic the router forwards between subnets gets ``hop_delay`` more each way (netem on the router's bridge
  devices, which only routed packets leave by), so a node reaches its rack's mirror in a fraction of a
  millisecond and the origin or the other racks' mirrors a little later (what stage1's latency order sees).
* Nodes' own links are not shaped: in a storm the servers' uplinks are the bottleneck.

Delays need netem (``CONFIG_NET_SCH_NETEM``); on a kernel without it (this CI VM's has only HTB and TBF) the
links are shaped but add no latency, and :attr:`StormNet.delays` says so. Namespaces are made with
``ip -batch`` (a 200-node network takes seconds) and always deleted on exit; those of a run that was killed
(``lbs<PID>x*`` whose PID no longer runs) are deleted by the next run as it starts.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field

from layerboot.run import run

_counter = itertools.count()
PREFIX = "10.77"
MAX_PER_RACK = 240


def remove_stale() -> list[str]:
    """Delete the namespaces of storm networks whose process is gone (killed before it could clean up)."""
    listing = run(["ip", "netns", "list"], check=False).stdout.decode(errors="replace")
    stale = []
    for line in listing.splitlines():
        name = line.split(maxsplit=1)[0] if line.strip() else ""
        match = re.fullmatch(r"lbs(\d+)x\d+-\S+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            stale.append(name)
    if stale:
        run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in stale).encode(), check=False)
    return stale


@dataclass
class Host:
    ns: str
    ip: str
    rack: int                 # 0: the core (origin)


@dataclass
class StormNet:
    racks: int
    rate: str = "1gbit"
    uplink_delay: str = "0.5ms"
    hop_delay: str = "0.5ms"
    tag: str = field(default_factory=lambda: f"lbs{os.getpid()}x{next(_counter)}")
    namespaces: list[str] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    delays: bool = False      # whether netem could add the delays (set on entering)

    @property
    def router(self) -> str:
        return f"{self.tag}-rt"

    # -- life cycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> "StormNet":
        remove_stale()
        try:
            self._netns_add([self.router])
            lines = ["link set lo up"]
            for rack in range(self.racks + 1):
                bridge = f"br{rack}"
                lines += [f"link add {bridge} type bridge stp_state 0 forward_delay 0",
                          f"addr add {PREFIX}.{rack}.1/24 dev {bridge}", f"link set {bridge} up"]
            self._batch(self.router, lines)
            run(["ip", "netns", "exec", self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            self.delays = self._netem_available()
            if self.delays:
                for rack in range(self.racks + 1):
                    self._tc(self.router, f"br{rack}", "root", "netem", "delay", self.hop_delay, "limit", "100000")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        lines = [f"netns del {ns}" for ns in reversed(self.namespaces)]
        if lines:
            run(["ip", "-force", "-batch", "-"], input="\n".join(lines).encode() + b"\n", check=False)
        self.namespaces.clear()

    # -- hosts ------------------------------------------------------------------------------------------------
    def origin(self) -> Host:
        return self._server("org", 0, 10)

    def mirror(self, rack: int) -> Host:
        return self._server(f"m{rack}", rack, 2)

    def nodes(self, count: int) -> list[Host]:
        """``count`` node namespaces, spread over the racks round-robin."""
        hosts = []
        for index in range(count):
            rack = 1 + index % self.racks
            number = self.counts.get(rack, 0)
            if number >= MAX_PER_RACK:
                raise ValueError(f"at most {MAX_PER_RACK} nodes per rack")
            self.counts[rack] = number + 1
            hosts.append(Host(f"{self.tag}-n{index}", f"{PREFIX}.{rack}.{10 + number}", rack))
        self._netns_add([h.ns for h in hosts])
        self._batch(self.router, [line for i, h in enumerate(hosts) for line in (
            f"link add vn{i} type veth peer name eth0 netns {h.ns}", f"link set vn{i} master br{h.rack} up")])
        for host in hosts:
            self._configure(host)
        return hosts

    def _server(self, name: str, rack: int, number: int) -> Host:
        host = Host(f"{self.tag}-{name}", f"{PREFIX}.{rack}.{number}", rack)
        self._netns_add([host.ns])
        self._batch(self.router, [f"link add v{name} type veth peer name eth0 netns {host.ns}",
                                  f"link set v{name} master br{rack} up"])
        self._configure(host)
        # the uplink: HTB at the rate, netem delay below it (a GSO packet is up to 64 KiB: burst above that)
        self._tc(host.ns, "eth0", "root", "handle", "1:", "htb", "default", "10")
        run(["tc", "-n", host.ns, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
             "rate", self.rate, "ceil", self.rate, "burst", "256k", "cburst", "256k"])
        if self.delays:
            self._tc(host.ns, "eth0", "parent", "1:10", "handle", "10:", "netem", "delay", self.uplink_delay,
                     "limit", "100000")
        return host

    def _configure(self, host: Host) -> None:
        self._batch(host.ns, ["link set lo up", "link set eth0 up", f"addr add {host.ip}/24 dev eth0",
                              f"route add default via {PREFIX}.{host.rack}.1"])

    # -- measuring --------------------------------------------------------------------------------------------
    @staticmethod
    def tx_bytes(ns: str, dev: str = "eth0") -> int:
        """Bytes ``dev`` in ``ns`` has sent (frames, headers included)."""
        data = json.loads(run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev]).text)
        return int(data[0]["stats64"]["tx"]["bytes"])

    @staticmethod
    def exec_argv(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    # -- helpers ----------------------------------------------------------------------------------------------
    def _netem_available(self) -> bool:
        """Whether the kernel has netem (CONFIG_NET_SCH_NETEM; this VM's kernel has only HTB and TBF)."""
        result = run(["tc", "-n", self.router, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"],
                     check=False)
        if result.returncode:
            return False
        run(["tc", "-n", self.router, "qdisc", "del", "dev", "lo", "root"], check=False)
        return True

    def _netns_add(self, names: list[str]) -> None:
        run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names).encode())
        self.namespaces += names

    @staticmethod
    def _batch(ns: str, lines: list[str]) -> None:
        run(["ip", "-n", ns, "-batch", "-"], input=("\n".join(lines) + "\n").encode())

    @staticmethod
    def _tc(ns: str, dev: str, *args: str) -> None:
        run(["tc", "-n", ns, "qdisc", "add", "dev", dev, *args])
