"""BENCH ONLY: stage1's stream.py for the relay comparison of bench/bench_boot.py (issue 18). Never in a product
initramfs: bench/peers/relays.py compiles this file as ``stage1/stream.pyc`` into an archive appended to a copy
of layerboot's initrd (the later archive wins), next to the product module renamed ``stage1/stream_product.pyc``.

It keeps everything of the product module except how a layer's block devices are served. The relay is chosen on
the kernel command line by ``bench.relay=``:

  nbdkit-curl   two nbdkit processes per layer in the initramfs (``nbdkit -s -o --filter=truncate curl``), one for
                the layer object and one for its dm-verity tree, each on a socket pair whose other end goes to the
                kernel's nbd driver (nbd.py, netlink); HTTP Range requests to layerbootd with the node's
                credential as a bearer header. ``-o`` (oldstyle handshake): stage1 reads the 152-byte greeting
                (size) off the kernel's end before handing it to the kernel.
  nbd-client    ``nbd-client`` in the initramfs against nbdkit on the server (``bench.nbd=HOST:PORT``, file
                plugin, read-only, one export per store object), one device for the layer, one for its tree.
  streamd       the product's own relay (stream_product.attach), unchanged.

For the first two, like the product module, a dm-verity target over the two devices with the signed root hash.
``bench.read_mb=N`` then reads the first N MiB of each streamed layer through dm-verity and prints the time: the
per-byte path of each relay (a workload that reads much of its image), not only its start.
"""

from __future__ import annotations

import os
import struct
import time

from .console import BUSYBOX, StageError, spawn
from .stream_product import BLOCK, _secret, _write_devices, streamable
from .stream_product import attach as _product_attach
from .stream_product import load_modules as _product_modules

NBDKIT = "/usr/bin/nbdkit"
NBD_CLIENT = "/usr/sbin/nbd-client"
OLDSTYLE = struct.Struct(">8sQQI124x")      # NBDMAGIC, 0x00420281861253, size, flags
GREETING_WAIT = 60.0

__all__ = ["attach", "load_modules", "streamable"]


def _options() -> dict[str, str]:
    with open("/proc/cmdline", encoding="ascii", errors="replace") as f:
        words = f.read().split()
    return dict(word.split("=", 1) for word in words if word.startswith("bench.") and "=" in word)


def load_modules() -> None:
    if _options().get("bench.relay") == "nbd-client":   # nbd-client names a /dev/nbdN: make a few
        spawn([BUSYBOX, "modprobe", "nbd", "nbds_max=16", "max_part=0"])
    _product_modules()


def _read_greeting(fd: int, what: str) -> int:
    import select

    data, deadline = b"", time.monotonic() + GREETING_WAIT
    while len(data) < OLDSTYLE.size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise StageError(f"{what}: nbdkit sent no greeting within {GREETING_WAIT:.0f} s")
        piece = os.read(fd, OLDSTYLE.size - len(data))
        if not piece:
            raise StageError(f"{what}: nbdkit closed the connection before its greeting")
        data += piece
    magic, version, size, _ = OLDSTYLE.unpack(data)
    if magic != b"NBDMAGIC" or version != 0x00420281861253:
        raise StageError(f"{what}: not an oldstyle NBD greeting: {data[:16]!r}")
    return size


def _curl_device(url: str, credential: str) -> str:
    """An nbd device served by ``nbdkit curl`` for ``url``; returns ``/dev/nbdN``."""
    import _socket

    from .nbd import connect

    kernel, daemon = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    argv = ["@nbdkit", "-s", "-o", "--filter=truncate", "curl", f"url={url}", "round-up=4096"]
    if credential:
        argv.append(f"header=Authorization: Bearer {credential}")
    try:
        try:
            os.posix_spawn(NBDKIT, argv, {"PATH": "/usr/bin:/bin"}, setsid=True,
                           file_actions=[(os.POSIX_SPAWN_DUP2, daemon.fileno(), 0),
                                         (os.POSIX_SPAWN_DUP2, daemon.fileno(), 1)])
        except OSError as err:
            raise StageError(f"cannot start nbdkit: {err.strerror or err}") from None
        daemon.close()
        size = _read_greeting(kernel.fileno(), url)
        return f"/dev/nbd{connect([kernel.fileno()], size)}"
    finally:
        daemon.close()
        kernel.close()


def _client_device(server: str, export: str, index: int) -> str:
    """``/dev/nbd<index>`` connected by nbd-client to nbdkit's export ``export`` on ``server`` (HOST:PORT)."""
    host, port = server.rsplit(":", 1)
    device = f"/dev/nbd{index}"
    code, output = spawn([NBD_CLIENT, host, port, device, "-N", export, "-b", str(BLOCK), "-readonly"])
    if code:
        raise StageError(f"nbd-client {export[:12]}: {output.strip()[-200:] or code}")
    return device


def attach(layers, *, bases: list[str], token: str, cache=None, giveup: float = 0.0,  # noqa: ANN001
           timeout: float = 10.0, connections: int = 1) -> dict[str, str]:
    options = _options()
    relay, started = options.get("bench.relay", ""), time.monotonic()
    if relay == "streamd":
        devices = _product_attach(layers, bases=bases, token=token, cache=cache, giveup=giveup, timeout=timeout,
                                  connections=connections)
    else:
        devices = _attach(layers, relay, options, bases, _secret() or token)
    print(f"bench-relay: {relay} attached {len(devices)} layers in {time.monotonic() - started:.2f} s", flush=True)
    read_mb = int(options.get("bench.read_mb", "0") or 0)
    for path in devices.values() if read_mb > 0 else ():
        _read(path, read_mb << 20)
    return devices


def _read(path: str, size: int) -> None:
    """Read ``size`` bytes (or the whole device) from ``path`` in 1 MiB reads; print the time taken."""
    started, done = time.monotonic(), 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while done < size:
            piece = os.read(fd, min(1 << 20, size - done))
            if not piece:
                break
            done += len(piece)
    except OSError as err:
        print(f"bench-read: {path}: {err} after {done} bytes", flush=True)
        return
    finally:
        os.close(fd)
    took = time.monotonic() - started
    print(f"bench-read: {done} bytes of {path} in {took:.2f} s ({done / took / 1e6:.1f} MB/s)", flush=True)


def _attach(layers, relay: str, options: dict, bases: list[str], credential: str) -> dict[str, str]:  # noqa: ANN001
    from .dm import DmError, create_verity, device_number
    from .nbd import NbdError

    devices, lines = {}, []
    for number, layer in enumerate(streamable(layers)):
        blocks = layer.verity.data_blocks(layer.size)
        try:
            data, tree = _devices(relay, options, layer, number, bases, credential)
            path = create_verity(f"layerboot-{layer.digest[:16]}", device_number(data), device_number(tree),
                                 blocks, 0, layer.verity.root)
        except (DmError, NbdError, OSError) as err:
            raise StageError(f"layer {layer.digest[:12]}: {err}") from None
        devices[layer.digest] = path
        lines.append({"digest": layer.digest, "nbd": data, "tree": tree, "verity": path, "root": layer.verity.root})
    _write_devices(lines, 0)
    return devices


def _devices(relay: str, options: dict, layer, number: int, bases: list[str],  # noqa: ANN001
             credential: str) -> tuple[str, str]:
    """The layer's data device and tree device (``/dev/nbdN``), served by ``relay``."""
    if relay == "nbdkit-curl":
        return (_curl_device(f"{bases[0]}/{layer.path}", credential),
                _curl_device(f"{bases[0]}/{layer.verity.tree_path}", credential))
    if relay == "nbd-client":
        return (_client_device(options["bench.nbd"], layer.path.rsplit("/", 1)[-1], 2 * number),
                _client_device(options["bench.nbd"], layer.verity.tree_path.rsplit("/", 1)[-1], 2 * number + 1))
    raise StageError(f"bench relay initrd: unknown bench.relay={relay!r}")
