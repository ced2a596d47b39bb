"""The boot benchmark's shaped link (bench/peers/link.py) on a real loopback: a namespace's own ``lo``, so the
host's is never touched. What leaves a shaped port goes no faster than the link; the rest of ``lo`` is left alone;
the qdisc is gone afterwards; a loopback that already has a qdisc is refused, not taken over."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.ports import free_port
from layerboot.run import Process, run

from pxenet import wait_for

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from peers.link import ShapedLink  # noqa: E402

pytestmark = pytest.mark.root
SIZE = 16 << 20


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"lblink{os.getpid() % 100000}"
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    try:
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


def serve(netns: str, root: Path, port: int) -> Process:
    quiet = open(os.devnull, "wb")
    proc = Process(["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", str(port), "--bind",
                    "127.0.0.1", "--directory", str(root)], stdout=quiet, stderr=quiet)
    probe = ["ip", "netns", "exec", netns, "curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/"]
    assert wait_for(lambda: run(probe, check=False).returncode == 0, 15), "http.server did not start"
    return proc


def download_mbit(netns: str, port: int) -> float:
    started = time.monotonic()
    out = run(["ip", "netns", "exec", netns, "curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
               f"http://127.0.0.1:{port}/blob"]).text
    assert int(out) == SIZE
    return SIZE * 8 / 1e6 / (time.monotonic() - started)


def qdisc(netns: str) -> str:
    return run(["ip", "netns", "exec", netns, "tc", "qdisc", "show", "dev", "lo"]).text


def test_a_shaped_port_goes_at_the_link_rate_and_the_rest_of_lo_does_not(netns: str, tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(os.urandom(SIZE))
    shaped_port, other_port = free_port(), free_port()
    servers = [serve(netns, tmp_path, shaped_port), serve(netns, tmp_path, other_port)]
    try:
        with ShapedLink(100, netns=netns) as link:
            link.shape(shaped_port)
            shaped = download_mbit(netns, shaped_port)
            other = download_mbit(netns, other_port)
            through = link.shaped_bytes()
            assert "htb" in qdisc(netns)
    finally:
        for proc in servers:
            proc.terminate(timeout=5)
    assert shaped <= 100 * 1.1, f"{shaped:.0f} Mbit/s through a 100 Mbit/s link"
    assert other > 2 * 100, f"the unshaped port went {other:.0f} Mbit/s: the default class is shaped too"
    assert through >= SIZE                      # the body went through the shaped class, the requests did not
    assert "htb" not in qdisc(netns)            # removed when the run ends


def test_a_loopback_with_a_qdisc_of_its_own_is_refused(netns: str) -> None:
    run(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root", "handle", "5:", "htb"])
    with pytest.raises(LayerbootError, match="already has a queueing discipline"):
        with ShapedLink(1000, netns=netns):
            pass
    assert "htb 5:" in qdisc(netns)             # left as it was
