"""Where stage1's per-byte time goes: each step of the fetch path timed on its own (bench/bench_fetch.py).

Runs under stage1's own interpreter (Debian's python3.11 -SIB) with stage1's modules on the path, either on the
host (``python3.11 -SIB fetch_probe.py STAGE1_PARENT STEP ARGS...``, one step per process) or as PID 1 of a QEMU
TCG guest (``/init`` of a repacked layerboot initrd: the steps come from ``probe.steps=`` on the kernel command
line). Stdlib modules that the initrd ships only. Every step prints one line::

    PROBE <step> <seconds> <bytes> <detail>

Steps (``SIZE`` in bytes):
  receive URL                 HTTP body into one reused 1 MiB buffer, discarded (network + copy to user space)
  receive-write URL DEST      ... and os.write to DEST (the tmpfs copy)
  hash ENGINE SIZE            SHA-256 of SIZE bytes in memory: openssl (_hashlib), python (_sha256), kernel (AF_ALG)
  fetch URL DIGEST SIZE DEST MODE   stage1.fetch.fetch_layer (MODE inline, thread or auto: how HashSink hashes)
  fetch-blocks URL DIGEST SIZE DEST TREE_URL TREE_DIGEST TREE_SIZE ROOT
                                    stage1's layerboot.verify=blocks path (fetch._blocks_layer): the layer without
                                    SHA-256, its tree hashed; the dm-verity attach replaced by a no-op (the host
                                    kernel has none; its in-guest cost is in bench/README.md)
  wget URL DEST               busybox wget -O DEST (what live-boot does; guest only)
  rehash PATH                 stage1.hashing.hash_file (a cached layer re-hashed)
  verity-enable PATH          FS_IOC_ENABLE_VERITY (the kernel builds the Merkle tree: once per layer)
  verity-measure PATH         FS_IOC_MEASURE_VERITY (what a cached boot does per layer)
  read PATH                   read the whole file (cold: after drop_caches), e.g. through fs-verity or dm-verity
  veritysetup-format DATA HASH / veritysetup-open DATA HASH ROOT   dm-verity's one-time and per-boot steps
  drop-caches                 sync + echo 3 > /proc/sys/vm/drop_caches
"""

from __future__ import annotations

import os
import sys
import time

BUFFER = 1 << 20


def _url(url: str) -> tuple[str, str]:
    base, _, name = url.rpartition("/")
    return base, name


def receive(url: str, dest: str = "", lowat: str = "") -> int:
    from stage1.http import request

    response = request("GET", url, timeout=30)
    if lowat:
        response._sock.setsockopt(1, 18, int(lowat))   # SOL_SOCKET, SO_RCVLOWAT
    view = memoryview(bytearray(BUFFER))
    total = calls = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if dest else -1
    try:
        while count := response.readinto(view):
            calls += 1
            if fd >= 0:
                out = view[:count]
                while out:
                    out = out[os.write(fd, out):]
            total += count
    finally:
        response.close()
        if fd >= 0:
            os.close(fd)
            os.unlink(dest)
    print(f"PROBE-NOTE {total // max(calls, 1)} bytes per receive", flush=True)
    return total


def _alg_sha256():  # noqa: ANN202 - the kernel's SHA-256 behind an AF_ALG socket, as a hash object
    import _socket

    class Kernel:
        def __init__(self) -> None:
            listener = _socket.socket(_socket.AF_ALG, _socket.SOCK_SEQPACKET, 0)
            listener.bind(("hash", "sha256"))
            fd, _ = listener._accept()
            listener.close()
            self.op = _socket.socket(_socket.AF_ALG, _socket.SOCK_SEQPACKET, 0, fd)

        def update(self, data: memoryview) -> None:
            self.op.sendall(data, _socket.MSG_MORE)

        def hexdigest(self) -> str:
            return self.op.recv(32).hex()

    return Kernel()


def hash_memory(engine: str, size: int) -> str:
    if engine == "openssl":
        from _hashlib import openssl_sha256 as new
    elif engine == "python":
        from _sha256 import sha256 as new
    else:
        new = _alg_sha256
    block = memoryview(os.urandom(BUFFER))
    hasher = new()
    for _ in range(size // BUFFER):
        hasher.update(block)
    return hasher.hexdigest()[:12]


def fetch(url: str, digest: str, size: str, dest: str, mode: str) -> str:
    from stage1.fetch import fetch_layer
    from stage1.verify import Layer

    try:
        from stage1 import hashing
    except ImportError:          # an initrd from before hashing.py (bench_fetch.py --initrd): its own path
        hashing = None
    if hashing is not None and mode in ("inline", "thread"):      # else stage1's own choice ("auto")
        hashing.overlapping = (lambda: False) if mode == "inline" else (lambda: True)
    base, name = _url(url)
    path = fetch_layer(base, "", Layer(digest, int(size), name), dest, timeout=30)
    os.unlink(path)
    if hashing is None:
        return "stage1 before hashing.py"
    return f"{hashing.engine()[0]},{'thread' if hashing.overlapping() else 'inline'}"


def fetch_blocks(url: str, digest: str, size: str, dest: str, tree_url: str, tree_digest: str, tree_size: str,
                 root: str) -> str:
    from stage1 import fetch as stage1_fetch
    from stage1 import localverity
    from stage1.verify import Layer, Verity

    base, name = _url(url)
    _, tree_name = _url(tree_url)
    layer = Layer(digest, int(size), name, verity=Verity(root, tree_digest, int(tree_size), tree_name))
    localverity.attach = lambda path, *args, **kwargs: path         # no dm-verity on the host: the file itself

    def fetch(item, **kwargs):  # noqa: ANN001, ANN003, ANN202 - fetch_layers' closure
        return stage1_fetch.fetch_layer(base, "", item, dest, timeout=30, **kwargs)

    def fetch_tree(tree, where: str) -> None:  # noqa: ANN001
        stage1_fetch.fetch_layer(base, "", tree, dest, timeout=30, part=where)

    path = stage1_fetch._blocks_layer(layer, dest, fetch, fetch_tree, None)
    os.unlink(path)
    os.unlink(localverity.tree_path(path))
    return "no-hash+tree"


def wget(url: str, dest: str) -> int:
    from stage1.console import spawn

    code, output = spawn(["/bin/busybox", "wget", "-q", "-O", dest, url])
    if code:
        raise RuntimeError(f"busybox wget: {output}")
    size = os.path.getsize(dest)
    os.unlink(dest)
    return size


def read_all(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    view = memoryview(bytearray(BUFFER))
    total = 0
    try:
        while count := os.readv(fd, [view]):
            total += count
    finally:
        os.close(fd)
    return total


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def veritysetup(*args: str) -> str:
    from stage1.console import spawn

    code, output = spawn(["/usr/sbin/veritysetup", *args])
    if code:
        raise RuntimeError(f"veritysetup {args[0]}: {output}")
    return output


def step(name: str, *args: str) -> None:
    """Run one step and print its PROBE line (a failure prints ``PROBE-FAILED <step> <why>``)."""
    started = time.monotonic()
    size, detail = 0, ""
    try:
        if name == "receive":
            size = receive(args[0], "", *args[1:])
        elif name == "receive-write":
            size = receive(*args)
        elif name == "hash":
            size, detail = int(args[1]), args[0] + ":" + hash_memory(args[0], int(args[1]))
        elif name == "fetch":
            size, detail = int(args[2]), fetch(*args)
        elif name == "fetch-blocks":
            size, detail = int(args[2]), fetch_blocks(*args)
        elif name == "wget":
            size = wget(*args)
        elif name == "rehash":
            from stage1.hashing import engine, hash_file

            digest, size = hash_file(args[0])
            detail = f"{engine()[0]}:{digest[:12]}"
        elif name == "verity-enable":
            from stage1.fsverity import enable

            enable(args[0])
            size = os.path.getsize(args[0])
        elif name == "verity-measure":
            from stage1.fsverity import measure

            detail = str(measure(args[0]))[:12]
        elif name == "read":
            size = read_all(args[0])
        elif name == "drop-caches":
            drop_caches()
        elif name == "veritysetup-format":
            output = veritysetup("format", "--salt=-", args[0], args[1])
            detail = next(line.split()[-1] for line in output.splitlines() if line.startswith("Root hash"))
            size = os.path.getsize(args[0])
        elif name == "veritysetup-open":
            veritysetup("open", args[0], "probe-verity", args[1], args[2])
            detail = "/dev/mapper/probe-verity"
        else:
            raise RuntimeError(f"unknown step {name}")
    except Exception as err:  # noqa: BLE001 - reported, the next step still runs
        print(f"PROBE-FAILED {name} {type(err).__name__}: {err}", flush=True)
        return
    label = {"hash": f"hash-{args[0]}" if args else name, "fetch": f"fetch-{args[-1]}" if args else name,
             "read": f"read-{os.path.basename(args[0])}" if args else name}.get(name, name)
    print(f"PROBE {label} {time.monotonic() - started:.3f} {size} {detail}", flush=True)


def guest_main() -> None:
    """PID 1 of the probe guest: mounts, modules, static network, then the steps from ``probe.steps=``."""
    sys.path.insert(0, "/usr/lib/layerboot")
    from stage1.console import spawn
    from stage1.system import load_modules, mount_api_filesystems

    mount_api_filesystems()
    with open("/proc/cmdline", encoding="utf-8") as f:
        words = dict(w.partition("=")[::2] for w in f.read().split() if w.startswith("probe."))
    try:
        load_modules(optional=("virtio_blk", "sha256_ssse3"))
        for name in sorted(os.listdir("/probe-ko")):   # AF_ALG and dm-verity: not in layerboot's initrd
            spawn(["/bin/busybox", "insmod", f"/probe-ko/{name}"])
        if "probe.ip" in words:
            from stage1.net import bring_up

            bring_up("", "", words["probe.ip"], 20)
        if "probe.disk" in words:
            os.makedirs("/mnt", exist_ok=True)
            spawn(["/bin/busybox", "mount", "-t", "ext4", words["probe.disk"], "/mnt"])
        flags = " ".join(f for f in open("/proc/cpuinfo").read().split("\n\n")[0].split() if f in
                         ("ssse3", "avx2", "sha_ni"))
        print(f"PROBE-INFO cpu [{flags}] sha256 drivers: "
              + ",".join(_drivers()) + f" python {sys.version.split()[0]}", flush=True)
        for item in words.get("probe.steps", "").split(";"):
            if item:
                step(*item.split(","))
    except BaseException as err:  # noqa: BLE001 - PID 1: say it and power off
        print(f"PROBE-FAILED guest {type(err).__name__}: {err}", flush=True)
    print("PROBE-DONE", flush=True)
    os.sync()
    spawn(["/bin/busybox", "poweroff", "-f"])
    while True:
        time.sleep(60)


def _drivers() -> list[str]:
    found, name = [], ""
    with open("/proc/crypto", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "name":
                name = value.strip()
            elif key.strip() == "driver" and name == "sha256":
                found.append(value.strip())
    return found


if __name__ == "__main__":
    if os.getpid() == 1:
        guest_main()
    else:
        sys.path.insert(0, sys.argv[1])
        step(*sys.argv[2:])
