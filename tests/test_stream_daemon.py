"""The stream daemon (initrd/stage1/streamd.py) as the kernel's nbd driver sees it, against the real layerbootd.

The test plays the kernel: it holds one end of each socket pair and sends NBD read requests; the daemon, started
the way stage1 starts it (stage1/stream.py: forked, renamed '@layerboot-stream', keeping only its own fds),
answers them with bytes fetched by HTTP Range requests with the node's credential.
The device it serves is the layer zero-padded to whole blocks, then the layer's dm-verity tree.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from server_daemon import MAC, OTHER_MAC, Daemon, write_config


REQUEST = struct.Struct(">IHH8sQI")
REPLY = struct.Struct(">II8s")
READ, DISC = 0, 2


class Kernel:
    """The kernel's end of one device's connection: numbered read requests, replies checked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.handle = 0

    def read(self, offset: int, length: int, timeout: float = 30) -> tuple[int, bytes]:
        self.handle += 1
        handle = struct.pack(">Q", self.handle)
        self.sock.settimeout(timeout)
        self.sock.sendall(REQUEST.pack(0x25609513, 0, READ, handle, offset, length))
        magic, error, got = REPLY.unpack(self._exactly(REPLY.size))
        assert magic == 0x67446698 and got == handle
        return error, (self._exactly(length) if not error else b"")

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            piece = self.sock.recv(count - len(data))
            assert piece, "the daemon closed the connection"
            data += piece
        return data

    def disconnect(self) -> None:
        self.sock.sendall(REQUEST.pack(0x25609513, 0, DISC, bytes(8), 0, 0))


@pytest.fixture
def served(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[dict]:  # noqa: ANN001
    store = profiles.store
    base = make_layer({"usr/share/a": os.urandom(300_000).hex(), "etc/b": "b\n"}, kind="base")
    other = make_layer({"etc/secret": "not for this node\n"}, kind="base")
    boot = {}
    for kind in ("kernel", "initrd"):
        (tmp_path / kind).write_bytes(os.urandom(1000))
        boot[kind] = store.import_boot_file(tmp_path / kind, kind=kind).digest
    profiles.create("node", base, **boot)
    profiles.create("elsewhere", other)
    profiles.signed_manifest("elsewhere")
    layer = store.get(base)
    data = store.path(base).read_bytes()
    device = data + bytes(-len(data) % 4096) + store.path(layer.verity.tree).read_bytes()
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    _, secret = daemon.registry().register(MAC, "node")
    daemon.start()
    try:
        yield {"layer": layer, "device": device, "daemon": daemon, "token": daemon.boot_token(), "secret": secret,
               "other": store.get(other), "tmp": tmp_path}
    finally:
        daemon.stop()


def start(served: dict, layer=None, *, credentials: list[str] | None = None, cache: Path | None = None,  # noqa: ANN001
          giveup: float = 0.0) -> tuple[Kernel, int, Path]:
    """The daemon for one device (``layer``, default the profile's base); returns the kernel's end, its pid and
    the file it writes its kernel-log lines to."""
    from layerboot.initrd.stage1.stream import _spawn_daemon

    layer = layer or served["layer"]
    kernel, ours = socket.socketpair()
    log = served["tmp"] / f"kmsg-{time.monotonic_ns()}"
    kmsg = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    keep = [ours.fileno(), kmsg]
    spec = {"digest": layer.digest, "size": layer.size, "path": f"objects/{layer.digest}",
            "tree_size": layer.verity.tree_size, "tree_path": f"objects/{layer.verity.tree}", "fds": [ours.fileno()]}
    if cache is not None:
        fd = os.open(cache, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, -(-layer.size // 4096) * 4096 + layer.verity.tree_size)
        spec["cache_fd"] = fd
        keep.append(fd)
    config = {"devices": [spec], "bases": [served["daemon"].url],
              "credentials": credentials if credentials is not None else [served["token"]], "kmsg_fd": kmsg,
              "stats_fd": -1, "giveup": giveup, "timeout": 5, "chunk": 64 << 10}
    try:
        pid = _spawn_daemon(config, keep)
    finally:
        for fd in keep:
            os.close(fd)
    return Kernel(kernel), pid, log


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_reads_are_the_layer_then_zero_padding_then_its_tree(served: dict) -> None:
    device, size = served["device"], served["layer"].size
    kernel, pid, log = start(served)
    try:
        assert open(f"/proc/{pid}/cmdline", "rb").read().rstrip(b"\0") == b"@layerboot-stream"
        assert open(f"/proc/{pid}/comm", encoding="ascii").read().strip() == "layerboot-strea"
        # forked from the test as from stage1: it keeps its socket, the kernel log and the console, nothing else
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert fds[0] == fds[1] == "/dev/null" and len(fds) == 5, fds
        assert str(log) in fds.values() and sum(target.startswith("socket:") for target in fds.values()) == 1, fds
        os.kill(pid, signal.SIGTERM)                       # ignored: only the kernel's DISC or SIGKILL end it
        time.sleep(0.2)
        for offset, length in ((0, 4096), (4096, 128 << 10), (size - 100 - size % 4096, 4096), (size - 4096, 8192),
                               (len(device) - 4096, 4096), (12288, 512), (0, len(device))):
            offset = max(0, offset - offset % 512)
            error, data = kernel.read(offset, length)
            assert error == 0 and data == device[offset:offset + length], (offset, length)
        error, _ = kernel.read(len(device), 4096)          # beyond the device: EIO, and the daemon goes on
        assert error == 5 and kernel.read(0, 4096) == (0, device[:4096])
        kernel.disconnect()
        os.waitpid(pid, os.WNOHANG)
    finally:
        stop(pid)
    assert "not read" in log.read_text()


def test_a_server_restart_is_waited_out(served: dict) -> None:
    """layerbootd goes away while the node reads: the read waits, and completes once the server is back."""
    daemon, device = served["daemon"], served["device"]
    kernel, pid, log = start(served)
    try:
        assert kernel.read(0, 4096) == (0, device[:4096])
        daemon.stop()
        result: list = []
        reader = threading.Thread(target=lambda: result.append(kernel.read(200 << 10, 8192, timeout=60)))
        reader.start()
        time.sleep(2.5)
        assert not result, "the read returned while the server was down"
        assert "server unreachable" in log.read_text()
        daemon.start()
        reader.join(60)
        assert result == [(0, device[200 << 10:(200 << 10) + 8192])]
        assert "server back after" in log.read_text()
    finally:
        stop(pid)


def test_the_cache_file_serves_blocks_read_before(served: dict, tmp_path: Path) -> None:
    device = served["device"]
    cache = tmp_path / "stream-cache"
    kernel, pid, _ = start(served, cache=cache)
    try:
        assert kernel.read(64 << 10, 64 << 10) == (0, device[64 << 10:128 << 10])
    finally:
        stop(pid)
    held = cache.read_bytes()
    assert held[64 << 10:128 << 10] == device[64 << 10:128 << 10]
    assert os.lseek(os.open(cache, os.O_RDONLY), 0, os.SEEK_DATA) == 64 << 10    # the rest is still holes
    served["daemon"].stop()                                                     # no server: from the cache only
    kernel, pid, log = start(served, cache=cache, giveup=1)
    try:
        assert kernel.read(64 << 10, 64 << 10) == (0, device[64 << 10:128 << 10])
        assert kernel.read(0, 4096)[0] == 5                                     # never read, no server: EIO
    finally:
        stop(pid)
    assert "layerboot.stream_giveup" in log.read_text()


def test_credentials_and_refusals(served: dict) -> None:
    device = served["device"]
    # an expired or revoked boot token (401): the node secret takes over
    kernel, pid, log = start(served, credentials=["lbb1.0.0.0.0", served["secret"]])
    try:
        assert kernel.read(0, 4096) == (0, device[:4096])
        assert "credential refused (401)" in log.read_text()
    finally:
        stop(pid)
    # another profile's layer: refused (403), every read EIO at once, the node is told why in the kernel log
    kernel, pid, log = start(served, served["other"])
    try:
        started = time.monotonic()
        assert kernel.read(0, 4096)[0] == 5 and time.monotonic() - started < 10
    finally:
        stop(pid)
    assert "403" in log.read_text()


def test_a_layers_tree_is_served_only_to_nodes_of_its_profiles(served: dict) -> None:
    daemon, tree = served["daemon"], served["layer"].verity.tree
    assert served["layer"].verity.tree_size > 0     # a real tree, not the empty one every one-block layer has
    assert daemon.get(f"/objects/{tree}", token=served["token"]).body == daemon.paths.object(tree).read_bytes()
    _, secret = daemon.registry().register(OTHER_MAC, "elsewhere", replace=True)   # that node's own secret
    assert daemon.get(f"/objects/{served['other'].digest}", token=secret).status == 200
    assert daemon.get(f"/objects/{tree}", token=secret).status == 403


def test_a_missing_tree_is_made_again_when_layerbootd_starts(served: dict) -> None:
    daemon, tree = served["daemon"], served["layer"].verity.tree
    daemon.stop()
    daemon.paths.object(tree).unlink()      # what an older layerbootd's clean-up or fsck --repair did
    daemon.start()
    deadline = time.monotonic() + 30
    while not daemon.paths.object(tree).is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.get(f"/objects/{tree}", token=served["token"]).body == served["device"][-len(
        daemon.paths.object(tree).read_bytes()):]
    assert "dm-verity tree of layer" in (served["tmp"] / "layerbootd.log").read_text()


def test_a_daemon_that_cannot_serve_is_one_error_line_for_stage1(tmp_path: Path) -> None:
    """stage1 hears why the daemon could not start (its ``error:`` line), not a hang or a traceback; the daemon
    is gone."""
    from layerboot.initrd.stage1.console import StageError
    from layerboot.initrd.stage1.stream import _spawn_daemon

    def children() -> set[int]:
        return {int(pid) for pid in Path(f"/proc/self/task/{threading.get_native_id()}/children").read_text().split()}

    kmsg = os.open(tmp_path / "kmsg", os.O_WRONLY | os.O_CREAT, 0o644)
    config = {"devices": [{"digest": "0" * 64, "fds": []}], "bases": ["http://127.0.0.1:9/"], "credentials": [],
              "kmsg_fd": kmsg, "stats_fd": -1}
    before = children()
    with pytest.raises(StageError, match=r"^the stream daemon said \"error: KeyError: 'size'\" instead of ready$"):
        _spawn_daemon(config, [kmsg])
    os.close(kmsg)
    (daemon,) = children() - before
    assert os.waitpid(daemon, 0)[1] == 1 << 8          # exit status 1
