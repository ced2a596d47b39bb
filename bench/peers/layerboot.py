"""layerboot itself: its initrd (build/initrd.py) booting the benchmark rootfs from layerbootd.

A fresh store per benchmark holds the rootfs image as the base layer, the kernel and layerboot's initrd, and two
profiles: ``bench-v1`` (the base alone) and ``bench-v2`` (the base plus an overlay layer holding the one-file
change). Each profile has its own registered node (MAC), so "rootfs version" picks the node. The store's signing
key is kept in the cache, so the initrd (which trusts that key) is built once and then reused from
build/initrd.py's own cache. layerbootd listens on a free loopback port behind a byte-counting relay.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.ports import free_port, wait_listening
from layerboot.run import Process, require_tool, run, tool_path

from peers.rootfs import VERSION_FILE
from peers.serve import CountingRelay
from peers.system import Bench, System, Unavailable

NEEDS = {
    "layerboot.build.initrd": "build/initrd.py (layerboot's initrd builder, issue 5)",
    "layerboot.server.main": "server/main.py (layerbootd)",
    "layerboot.initrd.stage1.main": "initrd/stage1/main.py (stage1)",
}
MACS = {"v1": "52:54:00:be:00:01", "v2": "52:54:00:be:00:02"}
CACHE_LABEL = "layerboot-cache"
CACHE_MB = 128
FAIL = re.compile(r"layerboot: FAILED:|layerboot: emergency action")
# A cached boot that fell back to no cache would be measured as an uncached one: count it as failed.
FAIL_CACHED = re.compile(FAIL.pattern + r"|layerboot: cache: .*without a cache")
_TOKEN = re.compile(r"^(lbb1\.\S+)\s*$", re.M)      # what 'layerboot nodes boot-token' prints


def missing_parts() -> list[str]:
    """The parts of layerboot this variant needs that are not in this tree yet."""
    return [what for module, what in NEEDS.items() if importlib.util.find_spec(module) is None]


def make_cache_disk(path: Path, size_mb: int = CACHE_MB) -> Path:
    """A fresh, empty ext4 image labelled for ``layerboot.cache=LABEL=...`` (stage1 never formats one), made as
    docs/stage1.md recommends: with fs-verity (4 KiB blocks), so cached layers are checked in O(1)."""
    path.unlink(missing_ok=True)
    with path.open("wb") as image:
        image.truncate(size_mb << 20)
    run([require_tool("mkfs.ext4", package="e2fsprogs"), "-q", "-F", "-O", "verity", "-b", "4096", "-L", CACHE_LABEL,
         path])
    return path


def cmdline(server: str, mac: str, token: str, profile: str) -> str:
    """What layerbootd's iPXE script would pass (direct kernel boot: no iPXE in the measured path)."""
    return (f"console=ttyS0 layerboot.server={server} layerboot.node={mac} layerboot.profile={profile} "
            f"layerboot.token={token} layerboot.emergency=poweroff panic=-1")


def _signing_key(cache: Path, private: Path, public: Path) -> None:
    """Copy the benchmark's persistent key pair into the store (creating it on first use)."""
    from layerboot.overlays.keys import generate_key
    kept = cache / "layerboot-key"
    if not (kept / "signing.key").is_file():
        tmp = cache / ".tmp-layerboot-key"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        generate_key(tmp / "signing.key", tmp / "signing.pub")
        shutil.rmtree(kept, ignore_errors=True)
        tmp.rename(kept)
    private.parent.mkdir(parents=True, exist_ok=True)
    public.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kept / "signing.key", private)
    shutil.copy2(kept / "signing.pub", public)


def _script(name: str) -> str:
    """A layerboot console script: next to this interpreter (pip's place for them), else on PATH."""
    here = Path(sys.executable).parent / name   # first: the fixed PATH may hold another install (/usr/local/bin)
    found = str(here) if here.is_file() and os.access(here, os.X_OK) else tool_path(name)
    if found is None:
        raise LayerbootError(f"{name} is not installed",
                             hint="run bash .ci/install (it installs layerboot into /opt/layerboot)")
    return found


def prepare_store(bench: Bench, root: Path) -> tuple[Path, dict[str, str]]:
    """Store, key, layers, profiles and nodes for the benchmark; returns the initrd path and each node's boot
    token (read-only, as layerbootd's iPXE script would hand out)."""
    from layerboot.build.initrd import DEFAULT_CACHE as INITRD_CACHE
    from layerboot.build.initrd import build_initrd
    from layerboot.overlays.profile import Profiles
    from layerboot.overlays.store import Store
    from layerboot.paths import Paths

    paths = Paths(root)
    store = Store(paths)
    store.init()
    _signing_key(bench.cache, paths.signing_key, paths.public_key)
    initrd = build_initrd(bench.kernel, paths.public_key, bench.workdir / "layerboot-initrd.img",
                          cache=INITRD_CACHE).path
    base = store.import_squashfs(bench.images["v1"], kind="base", description="bench rootfs v1").digest
    change = bench.workdir / "one-file-change"
    (change / VERSION_FILE).parent.mkdir(parents=True, exist_ok=True)
    (change / VERSION_FILE).write_text("v2\n")
    overlay = store.import_tree(change, kind="overlay", base=base, description="bench: v1 -> v2").digest
    kernel = store.import_boot_file(bench.kernel.image, kind="kernel").digest
    initrd_digest = store.import_boot_file(initrd, kind="initrd").digest
    profiles = Profiles(store)
    for version in MACS:
        profiles.create(f"bench-{version}", base, kernel=kernel, initrd=initrd_digest, cmdline="console=ttyS0")
    profiles.add("bench-v2", overlay)
    layerboot = _script("layerboot")
    tokens = {}
    for version, mac in MACS.items():
        run([layerboot, "--store", root, "nodes", "register", mac, "--profile", f"bench-{version}"])
        out = run([layerboot, "--store", root, "nodes", "boot-token", mac, "--ttl", "86400"]).text
        found = _TOKEN.search(out)
        if not found:
            raise LayerbootError(f"'layerboot nodes boot-token' printed no token: {out.strip()!r}")
        tokens[version] = found.group(1)
    return initrd, tokens


@contextmanager
def system(bench: Bench) -> Iterator[System]:
    """layerboot downloading each layer whole (the default, ``layerboot.fetch=full``), and its cache variant."""
    with _system(bench, "layerboot") as found:
        yield found


@contextmanager
def stream_system(bench: Bench) -> Iterator[System]:
    """layerboot streaming its layers (``layerboot.fetch=stream``: nbd + dm-verity, only the blocks read are
    fetched; docs/stage1.md "Streaming layers"), from a store and layerbootd of its own."""
    if importlib.util.find_spec("layerboot.initrd.stage1.stream") is None:
        raise Unavailable("not yet available: initrd/stage1/stream.py (issue 18) not in this tree")
    with _system(bench, "layerboot-stream", " layerboot.fetch=stream") as found:
        yield found


@contextmanager
def blocks_system(bench: Bench) -> Iterator[System]:
    """layerboot's full fetch with ``layerboot.verify=blocks`` (issue 20): each layer downloaded without SHA-256
    and attached through dm-verity with its signed tree (docs/stage1.md, "Verifying whole layers")."""
    with _system(bench, "layerboot-blocks", " layerboot.verify=blocks") as found:
        yield found


@contextmanager
def _system(bench: Bench, name: str, extra: str = "") -> Iterator[System]:
    missing = missing_parts()
    if missing:
        raise Unavailable("not yet available: " + ", ".join(missing) + " not in this tree")
    root = bench.workdir / f"{name}-store"
    initrd, tokens = prepare_store(bench, root)
    port = free_port()
    log_path = bench.logs / f"{name}-layerbootd.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    daemon = Process([_script("layerbootd"), "--store", root, "--listen", "127.0.0.1", "--port", str(port),
                      "--ssh-port", "0"], stdout=log, stderr=log)
    try:
        wait_listening(port, daemon, "layerbootd", log=log_path, timeout=60)
        with CountingRelay(port) as relay:
            server = f"http://10.0.2.2:{bench.guest_port(relay.port)}"
            cached = None
            if importlib.util.find_spec("layerboot.initrd.stage1.cache") is not None and not extra:
                with_cache = f" layerboot.cache=LABEL={CACHE_LABEL}"
                cached = System("layerboot-cache", initrd,
                                lambda v: cmdline(server, MACS[v], tokens[v], f"bench-{v}") + with_cache,
                                FAIL_CACHED, relay.traffic, mac=MACS)
            yield System(name, initrd, lambda v: cmdline(server, MACS[v], tokens[v], f"bench-{v}") + extra, FAIL,
                         relay.traffic, mac=MACS, cache_variant=cached)
    finally:
        daemon.terminate()
        log.close()
