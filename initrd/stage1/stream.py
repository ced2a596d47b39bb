"""Streaming layers (``layerboot.fetch=stream``): each layer with a dm-verity tree in the signed manifest becomes a
network block device with dm-verity on top, and its squashfs is mounted from that: nothing is downloaded before
the root filesystem exists, only the blocks the node reads are fetched, and the kernel checks each of them
against the signed root hash (a block that does not match is EIO, never data). docs/stage1.md, "Streaming
layers", has the contract and the reasons for this design.

Per layer: socket pairs (one per connection), the kernel's ends given to the nbd driver over netlink (nbd.py),
the other ends to the stream daemon (streamd.py, forked from stage1 and outliving it: ``@layerboot-stream``),
then a dm-verity device over the nbd device (dm.py) with the tree after the data on the same device. Layers the
manifest gives no usable tree are fetched whole, as without streaming. Nothing happens at import time.
"""

from __future__ import annotations

import os
import time

from .console import BUSYBOX, StageError, debug, spawn
from .dm import MODULES as DM_MODULES
from .system import MODULES as STACK_MODULES

CONNECTIONS = 1                     # sockets per device (the daemon answers each in order, one thread each)
READY_TIMEOUT = 30.0
DAEMON_NAME = "@layerboot-stream"   # '@': systemd's shutdown does not kill it (the root filesystem needs it)
STATS_FILE = "/run/layerboot/stream-stats.json"
DEVICES_FILE = "/run/layerboot/stream.json"
BLOCK = 4096


# What a streamed boot loads with the layer stack, in the first modprobe (system.load_modules): no ``loop``,
# which only a layer fetched whole needs (system.attach_loop loads it then). nbd's options, no pre-made devices
# or partitions (netlink makes one per layer, nothing scans it), come from /etc/modprobe.d/layerboot.conf in
# the initramfs (build/initrd.py), since ``modprobe -a`` takes no options.
MODULES = (*(name for name in STACK_MODULES if name != "loop"), "nbd", *DM_MODULES)
NBD_OPTIONS = ("nbds_max=0", "max_part=0")


def load_modules() -> None:
    """nbd and dm-verity, when the first modprobe did not load them (a StageError says why they cannot be)."""
    if not os.path.isdir("/sys/module/nbd"):
        code, output = spawn([BUSYBOX, "modprobe", "nbd", *NBD_OPTIONS])
        if code and not os.path.isdir("/sys/module/nbd"):
            raise StageError(f"layerboot.fetch=stream: cannot load the nbd module: {output or code}")
    from .localverity import VerityUnavailable
    from .localverity import load_modules as load_dm_verity

    try:
        load_dm_verity()
    except VerityUnavailable as err:
        raise StageError(f"layerboot.fetch=stream: {err}") from None


def streamable(layers) -> list:  # noqa: ANN001, ANN201 - verify.Layer tuple -> list
    return [layer for layer in layers if layer.verity is not None]


def _secret(path: str = "/run/layerboot/node.secret") -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _spawn_daemon(config: dict, keep: list[int]) -> int:
    """Fork the daemon off this process, serving ``config`` with only the fds in ``keep`` (and the console on 2);
    wait for its ``ready``. Returns its pid.

    A fork, not a second interpreter: everything the daemon runs is imported here already (streamd is imported
    before the fork). Measured under QEMU TCG with ``layerboot.debug`` (bench_boot.py, 1 GiB base, 2026-12-01):
    from the manifest line to "stream daemon N serves" took 0.19 s with a fresh ``python3.11 -SIB`` for the
    daemon, and 0.05-0.09 s forked.
    """
    import gc

    from . import streamd

    gc.collect()   # garbage holding an fd is closed now, not later in the child where the fd number is reused
    ready_read, ready_write = os.pipe()
    try:
        pid = os.fork()
    except OSError as err:
        os.close(ready_read)
        os.close(ready_write)
        raise StageError(f"cannot start the stream daemon: {err.strerror or err}") from None
    if pid == 0:   # the daemon: never returns into stage1
        try:
            os.close(ready_read)
            streamd.run_forked(config, [*keep, ready_write], ready_write, name=DAEMON_NAME)
        finally:
            os._exit(1)
    os.close(ready_write)
    deadline = time.monotonic() + READY_TIMEOUT
    answer = b""
    try:   # read to the end: the daemon closes its end after "ready", so it holds only its own fds from here on
        while piece := _read_before(ready_read, deadline):
            answer += piece
    finally:
        os.close(ready_read)
    if not answer:
        raise StageError("the stream daemon stopped before it was ready")
    if not answer.startswith(b"ready"):
        raise StageError(f"the stream daemon said {answer[:120].decode('utf-8', 'replace').strip()!r} "
                         "instead of ready")
    return pid


def _read_before(fd: int, deadline: float) -> bytes:
    """What the next read of ``fd`` gives (b"" at its end); StageError when nothing comes before ``deadline``."""
    import select

    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise StageError(f"the stream daemon did not start within {READY_TIMEOUT:.0f} s")
    return os.read(fd, 256)


def attach(layers, *, bases: list[str], token: str, cache=None, giveup: float = 0.0,  # noqa: ANN001
           timeout: float = 10.0, connections: int = CONNECTIONS) -> dict[str, str]:
    """Stream ``layers`` (those with a tree); returns {digest: /dev/dm-N} to mount, base first.

    ``bases`` are the URLs objects are fetched from, in order (fetch.base_urls); ``cache`` a LayerCache for the
    read-through cache files. Raises StageError with one line when a layer cannot be attached.
    """
    import _socket

    from .dm import DmError, create_verity, device_number
    from .nbd import NbdError, connect

    chosen = streamable(layers)
    if not chosen:
        return {}
    secret = _secret()
    pairs, keep, files, specs = [], [], [], []
    for layer in chosen:
        data_end = layer.verity.data_blocks(layer.size) * BLOCK
        ends = [_socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM) for _ in range(connections)]
        pairs.append(ends)
        spec = {"digest": layer.digest, "size": layer.size, "path": layer.path, "tree_size": layer.verity.tree_size,
                "tree_path": layer.verity.tree_path, "fds": [daemon.fileno() for _, daemon in ends]}
        keep += spec["fds"]
        if cache is not None:
            fd = cache.stream_file(layer.digest, data_end + layer.verity.tree_size)
            if fd >= 0:
                spec["cache_fd"] = fd
                files.append(fd)
        specs.append(spec)
    kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC) if os.path.exists("/dev/kmsg") else \
        os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    os.makedirs(os.path.dirname(STATS_FILE), exist_ok=True)
    stats = os.open(STATS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    files += [kmsg, stats]
    keep += files
    config = {"devices": specs, "bases": bases, "credentials": [c for c in (secret, token) if c],
              "kmsg_fd": kmsg, "stats_fd": stats, "giveup": giveup, "timeout": timeout}
    try:
        pid = _spawn_daemon(config, keep)
    finally:   # the daemon has its own copies now
        for ends in pairs:
            for _, daemon in ends:
                daemon.close()
        for fd in files:
            os.close(fd)
    debug(f"stream daemon {pid} serves {len(chosen)} layers ({len(bases)} base URL(s), "
          f"{'node secret' if secret else 'boot token'} first)")
    devices, lines = {}, []
    for layer, ends in zip(chosen, pairs):
        blocks = layer.verity.data_blocks(layer.size)
        try:
            index = connect([kernel.fileno() for kernel, _ in ends], blocks * BLOCK + layer.verity.tree_size)
            nbd = f"/dev/nbd{index}"
            number = device_number(nbd)
            path = create_verity(f"layerboot-{layer.digest[:16]}", number, number, blocks, blocks,
                                 layer.verity.root)
        except (NbdError, DmError, OSError) as err:
            raise StageError(f"layer {layer.digest[:12]}: {err}") from None
        finally:
            for kernel, _ in ends:
                kernel.close()
        devices[layer.digest] = path
        lines.append({"digest": layer.digest, "nbd": nbd, "verity": path, "root": layer.verity.root})
        debug(f"layer {layer.digest[:12]}: {nbd} ({layer.size} bytes + tree), dm-verity {path}")
    _write_devices(lines, pid)
    return devices


def _write_devices(lines: list[dict], pid: int) -> None:
    from .jsonlite import dumps

    try:
        with open(DEVICES_FILE, "w", encoding="utf-8") as f:
            f.write(dumps({"daemon_pid": pid, "devices": lines, "stats": STATS_FILE}, sort_keys=True) + "\n")
    except OSError:
        pass
