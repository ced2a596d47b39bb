"""A boot network of a given speed between the guests and the benchmark's servers (issue 18: "a link shaped to
1 Gbit/s").

The guests reach the servers through QEMU's user network, which is the host's loopback: there is no link of
their own to shape. So the shaping sits on the loopback's egress, where every byte a server sends to a guest
passes: an HTB root with one class at the link's rate, into which a u32 filter puts the packets leaving each
guest-facing server port (:meth:`ShapedLink.shape`). HTB sends what no filter classifies straight on (its
"direct" queue, ``default 0``), so everything else on ``lo`` goes on as before; so do the requests and ACKs going
the other way, as on a switch port. The class's burst is 10 ms at the link's rate: with a 1 ms burst a QEMU
guest (which keeps a host CPU busy) got 25-30 MB/s through a 1 Gbit/s class, a quarter of the rate, because
HTB's timer fires late under load and the tokens of the late interval are lost.

Needs ``tc`` (iproute2) and the kernel's sch_htb and cls_u32, and refuses to run over a root qdisc someone else
put on ``lo``. The qdisc is removed when the run ends. ``netns`` shapes another namespace's loopback (the tests).
"""

from __future__ import annotations

from types import TracebackType

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run

DEVICE = "lo"
SHAPED = "1:10"
BURST_MS = 10


class ShapedLink:
    """``with ShapedLink(1000) as link: link.shape(port)``: what leaves ``port`` goes at most 1000 Mbit/s."""

    def __init__(self, mbit: int, *, netns: str = "") -> None:
        if mbit < 1:
            raise LayerbootError(f"link rate {mbit} Mbit/s: give at least 1")
        self.mbit = mbit
        self.netns = netns
        self.ports: list[int] = []
        self._tc = ""

    def _run(self, *args: str, check: bool = True) -> str:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return run([*prefix, self._tc, *args], check=check).text

    def __enter__(self) -> ShapedLink:
        self._tc = str(require_tool("tc", package="iproute2"))
        current = self._run("qdisc", "show", "dev", DEVICE)
        if "qdisc noqueue" not in current and current.strip():
            raise LayerbootError(f"{DEVICE} already has a queueing discipline ({current.splitlines()[0].strip()})",
                                 hint="remove it (tc qdisc del dev lo root), or run with --link-mbit 0")
        burst = f"{max(64 * 1024, self.mbit * 1000 * BURST_MS // 8)}b"   # at least one of lo's GSO packets
        try:
            self._run("qdisc", "add", "dev", DEVICE, "root", "handle", "1:", "htb", "default", "0", "r2q", "1000")
            self._run("class", "add", "dev", DEVICE, "parent", "1:", "classid", SHAPED, "htb",
                      "rate", f"{self.mbit}mbit", "burst", burst, "cburst", burst)
        except LayerbootError as err:
            self._remove()
            raise LayerbootError(f"cannot shape {DEVICE} to {self.mbit} Mbit/s: {err}",
                                 hint="the kernel needs sch_htb and cls_u32; or run with --link-mbit 0") from None
        return self

    def shape(self, port: int) -> int:
        """Send what leaves local TCP ``port`` through the link; returns the port."""
        self._run("filter", "add", "dev", DEVICE, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                  "match", "ip", "sport", str(port), "0xffff", "flowid", SHAPED)
        self.ports.append(port)
        return port

    def shaped_bytes(self) -> int:
        """Bytes that went through the shaped class so far (``tc -s class``)."""
        text = self._run("-s", "class", "show", "dev", DEVICE, "classid", SHAPED)
        words = text.split()
        return int(words[words.index("Sent") + 1]) if "Sent" in words else 0

    def describe(self) -> str:
        return f"link shaped to {self.mbit} Mbit/s (tc htb on {DEVICE}, server ports {', '.join(map(str, self.ports))})"

    def _remove(self) -> None:
        self._run("qdisc", "del", "dev", DEVICE, "root", check=False)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._remove()
