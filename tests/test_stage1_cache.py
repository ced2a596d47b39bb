"""stage1's local layer cache on a real loop-mounted ext4 image: finding it without udev, verified lookups,
corruption detected and refetched (also when its mtime was put back), interrupted writes ignored, anti-replay
serials, garbage collection. The CI host's kernel has no fs-verity, so these exercise the re-hash path; the
fs-verity path is booted in tests/test_boot_qemu.py (test_cache_layers_are_verified_before_use)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.initrd.stage1 import cache as cachemod
from layerboot.initrd.stage1.cache import CacheError, LayerCache, open_cache
from layerboot.initrd.stage1.verify import Layer, SerialCache
from layerboot.run import run

LABEL = "lbcache-test"


def _layer(tmp_path: Path, text: str) -> tuple[Layer, Path]:
    path = tmp_path / f"src-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    path.write_bytes(text.encode() * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Layer(digest, path.stat().st_size, f"objects/{digest}"), path


def _envelope(serial: int, digests: list[str]) -> bytes:
    payload = json.dumps({"format": "layerboot-manifest/1", "serial": serial, "generation": serial,
                          "layers": [{"digest": d, "size": 1, "path": f"objects/{d}"} for d in digests]})
    return json.dumps({"format": "layerboot-signed/1", "payload": payload, "signature": "x"}).encode()


@pytest.fixture
def device(tmp_path: Path) -> Iterator[str]:
    image = tmp_path / "cache.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    run(["mkfs.ext4", "-q", "-L", LABEL, image])
    loop = run(["losetup", "--find", "--show", image]).text.strip()
    yield loop
    run(["umount", "-l", loop], check=False)
    run(["losetup", "--detach", loop], check=False)


@pytest.fixture
def cache(device: str, tmp_path: Path) -> Iterator[LayerCache]:
    opened = open_cache(device, str(tmp_path / "mnt"))
    assert opened is not None
    yield opened
    opened.close()


def _mounted(path: Path) -> bool:
    return f" {path} " in Path("/proc/mounts").read_text()


@pytest.mark.root
def test_the_cache_is_found_by_label_and_uuid_without_udev(device: str, tmp_path: Path) -> None:
    uuid = run(["blkid", "-p", "-s", "UUID", "-o", "value", device]).text.strip()
    assert cachemod.ext4_identity(device) == (uuid, LABEL)
    assert cachemod.resolve_device(f"LABEL={LABEL}") == device
    assert cachemod.resolve_device(f"UUID={uuid.upper()}") == device
    assert cachemod.resolve_device("LABEL=no-such-cache") is None
    for spec in (f"LABEL={LABEL}", f"UUID={uuid}", device):
        mnt = tmp_path / "mnt"
        opened = open_cache(spec, str(mnt))
        assert opened is not None and _mounted(mnt)
        opened.close()
        assert not _mounted(mnt)


@pytest.mark.root
def test_an_unformatted_or_missing_cache_is_reported_and_the_boot_goes_on(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as handle:
        handle.truncate(16 << 20)
    loop = run(["losetup", "--find", "--show", blank]).text.strip()
    lines: list[str] = []
    try:
        assert open_cache(loop, str(tmp_path / "mnt"), say=lines.append) is None
        assert lines == [f"cache: {loop} has no ext4 filesystem (not formatted?); booting without a cache "
                         f"(to make one: mkfs.ext4 -L layerboot-cache {loop})"]
        assert not _mounted(tmp_path / "mnt")
        assert run(["blkid", "-p", loop], check=False).returncode != 0      # still blank: nothing formatted
    finally:
        run(["losetup", "--detach", loop], check=False)
    assert open_cache("LABEL=nowhere", str(tmp_path / "m2"), wait=0.2, say=lines.append) is None
    assert lines[-1] == "cache: no device matches layerboot.cache=LABEL=nowhere after 0 s; booting without a cache"
    assert open_cache("PARTUUID=1", str(tmp_path / "m3"), say=lines.append) is None
    assert "use a device path, LABEL=name or UUID=uuid" in lines[-1]


@pytest.mark.root
def test_admitted_layers_survive_a_remount_and_are_verified_on_every_lookup(cache: LayerCache, device: str,
                                                                           tmp_path: Path) -> None:
    layer, src = _layer(tmp_path, "base")
    assert cache.lookup(layer) is None
    path = cache.admit(layer, str(src))
    assert src.exists() and Path(path).read_bytes() == src.read_bytes()     # copied from another filesystem
    assert oct(os.stat(path).st_mode & 0o777) == "0o444"
    assert cache.lookup(layer) == path
    cache.close()
    lines: list[str] = []
    again = open_cache(device, str(tmp_path / "mnt"), say=lines.append)
    assert again is not None
    try:
        Path(again.path(layer.digest) + ".ok").write_text("a record of an older version\n")
        assert again.lookup(layer) == again.path(layer.digest)
        assert again.lookup(Layer(layer.digest, layer.size, layer.path, "f" * 64)) == again.path(layer.digest)
        again.lookup(Layer(layer.digest, layer.size, layer.path, "f" * 64))
        # Without digests in the manifest, and without fs-verity in this kernel: each said once, then hashed.
        assert len(lines) == 2, lines
        assert lines[0] == ("cache: the signed manifest names no fs-verity digests (an older server): cached layers are "
                            "checked through their dm-verity trees (else re-hashed on every boot)")
        assert lines[1].startswith("cache: no fs-verity on the cache filesystem (") and lines[1].endswith(
            "): cached layers are checked through their dm-verity trees (else re-hashed on every boot); "
            "'tune2fs -O verity DEVICE' (unmounted) or 'mkfs.ext4 -O verity' makes it O(1)")
        again.gc({layer.digest})
        assert not os.path.exists(again.path(layer.digest) + ".ok")           # forgeable records are gone
    finally:
        again.close()


@pytest.mark.root
def test_a_download_on_the_cache_filesystem_is_renamed_in(cache: LayerCache, tmp_path: Path) -> None:
    layer, src = _layer(tmp_path, "renamed")
    tmp = cache.tmp_path(layer.digest)
    Path(tmp).write_bytes(src.read_bytes())
    inode = os.stat(tmp).st_ino
    path = cache.admit(layer, tmp, verified=True)
    assert os.stat(path).st_ino == inode and not os.path.exists(tmp)
    wrong = cache.tmp_path("0" * 64)
    Path(wrong).write_bytes(b"not that")
    zero = Layer("0" * 64, 8, "objects/" + "0" * 64)
    with pytest.raises(CacheError, match="does not hash to 000000000000"):
        cache.admit(zero, wrong)
    assert cache.lookup(zero) is None


def _flip_byte_keep_mtime(path: str, offset: int = 500) -> None:
    """What root on a node can do: change a cached layer in place and put its times back."""
    before = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, 0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.stat(path).st_size == before.st_size


@pytest.mark.root
def test_an_altered_cached_layer_with_its_mtime_put_back_is_refused_and_refetched(cache: LayerCache,
                                                                                 tmp_path: Path) -> None:
    layer, src = _layer(tmp_path, "overlay")
    path = cache.admit(layer, str(src))
    assert cache.lookup(layer) == path
    _flip_byte_keep_mtime(path)
    lines: list[str] = []
    cache.say = lines.append
    assert cache.lookup(layer) is None
    assert lines[-1].startswith(f"cache: layer {layer.digest[:12]} hashes to ")
    assert lines[-1].endswith("(altered or damaged): removed, fetching it again")
    assert not os.path.exists(path)
    assert cache.admit(layer, str(src)) == path              # the caller fetched it again
    assert cache.lookup(layer) == path
    with open(path, "ab") as handle:                          # longer than signed: refused without hashing
        os.chmod(path, 0o644)
        handle.write(b"x")
    assert cache.lookup(layer) is None and f"has {layer.size + 1} bytes, the signed manifest says" in lines[-1]
    os.symlink(str(src), path)                                # a symlink to the right bytes is still refused
    assert cache.lookup(layer) is None and "is not a regular file" in lines[-1] and not os.path.lexists(path)


@pytest.mark.root
def test_leftovers_of_a_power_cut_are_ignored_and_cleaned(cache: LayerCache, device: str,
                                                          tmp_path: Path) -> None:
    layer, src = _layer(tmp_path, "half")
    digest = layer.digest
    cache.accept(3, _envelope(3, [digest]))
    half = src.read_bytes()[: src.stat().st_size // 2]
    Path(cache.tmp_path(digest)).write_bytes(half)            # the copy was cut off before its rename
    Path(cache.root, "manifest.json.tmp").write_bytes(b'{"trunc')   # and so was the next accept
    cache.close()
    again = open_cache(device, str(tmp_path / "mnt"))
    assert again is not None
    try:
        assert again.cleaned == 2
        assert not os.path.exists(again.tmp_path(digest))
        assert again.lookup(layer) is None
        assert again.last_manifest() == _envelope(3, [digest]) and again.last_serial() == 3
    finally:
        again.close()


@pytest.mark.root
def test_manifests_only_move_forward_and_share_the_serial_file_with_verify(cache: LayerCache) -> None:
    assert cache.last_serial() == 0 and cache.last_manifest() is None
    cache.accept(5, _envelope(5, ["a" * 64]))
    with pytest.raises(CacheError, match="refusing manifest serial 4: lower than the last accepted 5"):
        cache.accept(4, _envelope(4, ["b" * 64]))
    assert cache.last_manifest() == _envelope(5, ["a" * 64])
    cache.accept(5, _envelope(5, ["a" * 64]))                 # the same manifest again (a reboot) is fine
    assert SerialCache(cache.root).load() == 5                # stage1's serial check reads the same file
    SerialCache(cache.root).store(9)
    assert cache.last_serial() == 9
    Path(cache.root, "last-serial").write_text("garbage")
    with pytest.raises(CacheError, match="unreadable"):
        cache.last_serial()


@pytest.mark.root
def test_gc_keeps_the_current_and_previous_generation(cache: LayerCache, tmp_path: Path) -> None:
    layers = [_layer(tmp_path, name) for name in ("base", "g1", "g2", "g3")]
    for layer, src in layers:
        cache.admit(layer, str(src))
    base, g1, g2, g3 = (layer.digest for layer, _ in layers)
    cache.accept(1, _envelope(1, [base, g1]))
    cache.accept(2, _envelope(2, [base, g2]))
    cache.accept(3, _envelope(3, [base, g3]))
    keep = cache.generation_digests()
    assert keep == {base, g2, g3}
    freed = cache.gc(keep)
    assert freed == layers[1][1].stat().st_size
    assert cache.digests() == {base, g2, g3} and cache.lookup(layers[1][0]) is None
    assert not any(name.startswith(g1) for name in os.listdir(cache.layers))


@pytest.mark.root
def test_stream_files_are_sparse_keep_their_blocks_and_go_with_their_generation(cache: LayerCache) -> None:
    kept, old = "c" * 64, "d" * 64
    fd = cache.stream_file(kept, 1 << 20)
    os.pwrite(fd, b"block", 8192)
    os.close(fd)
    fd = cache.stream_file(kept, 1 << 20)          # the next boot: the same file, what was written still there
    assert os.pread(fd, 5, 8192) == b"block" and os.fstat(fd).st_size == 1 << 20
    assert os.fstat(fd).st_blocks * 512 < 1 << 20  # sparse: holes where nothing was read
    os.close(fd)
    fd = cache.stream_file(kept, 2 << 20)          # another size (not this layer's file): emptied, never misread
    assert os.pread(fd, 5, 8192) == bytes(5) and os.fstat(fd).st_size == 2 << 20
    os.close(fd)
    os.close(cache.stream_file(old, 4096))
    cache.gc({kept})
    assert os.listdir(os.path.join(cache.root, "stream")) == [kept]
    with pytest.raises(CacheError):
        cache.stream_file("../etc", 4096)


def test_importing_the_cache_module_loads_nothing_heavy() -> None:
    code = ("import sys; before = set(sys.modules); import layerboot.initrd.stage1.cache; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = set(run([sys.executable, "-c", code], cwd="/").text.split())
    # __future__ (a stdlib module with no imports of its own) is already loaded by some interpreters' site hooks
    assert loaded - {"__future__"} <= {"layerboot", "layerboot.initrd", "layerboot.initrd.stage1",
                                       "layerboot.initrd.stage1.cache"}


# -- whole cached layers through dm-verity (issue 18) ------------------------------------------------------------
# This host's kernel has no dm-verity: the kernel side (localverity.attach) is replaced by a recorder here, and the
# real attach of a cached layer runs in the QEMU boot (tests/test_boot_qemu.py,
# test_cache_disk_boots_offline_after_a_server_boot). What is tested here is the cache's choice and its files.
def _verity_layer(tmp_path: Path, text: str) -> tuple[Layer, Path, bytes]:
    from layerboot.initrd.stage1.verify import Verity
    from layerboot.overlays.verity import merkle_tree

    path = tmp_path / f"vsrc-{text}"
    path.write_bytes((text.encode() * 4096)[: 4096 * 20])
    tree = merkle_tree(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    tree_digest = hashlib.sha256(tree.tree).hexdigest()
    verity = Verity(tree.root, tree_digest, len(tree.tree), f"objects/{tree_digest}")
    return Layer(digest, path.stat().st_size, f"objects/{digest}", verity=verity), path, tree.tree


class Kernel:
    """Stands in for dm-verity on this host: records attaches; ``refuse``/``absent`` make it refuse or be missing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from layerboot.initrd.stage1 import hashing, localverity

        self.attached: list[tuple[str, str, str]] = []
        self.refuse = self.absent = False
        self.hashed: list[str] = []
        monkeypatch.setattr(localverity, "load_modules", self.load_modules)
        monkeypatch.setattr(localverity, "attach", self.attach)
        real = hashing.hash_file

        def counted(path: str, *args: object, **kwargs: object) -> tuple[str, int]:
            self.hashed.append(path)
            return real(path, *args, **kwargs)
        monkeypatch.setattr(hashing, "hash_file", counted)

    def load_modules(self) -> None:
        if self.absent:
            raise localverity_mod().VerityUnavailable("no dm-verity in this kernel (test)")

    def attach(self, path: str, tree: str, size: int, root: str, tree_size: int, *, name: str) -> str:
        localverity_mod().check_files(path, tree, size, tree_size)     # the real file checks
        if self.refuse:
            raise localverity_mod().VerityRefused("dm-verity refuses its first block (test)")
        self.attached.append((path, Path(tree).read_bytes().hex()[:16], root))
        return f"/dev/dm-{len(self.attached)}"


def localverity_mod():  # noqa: ANN201
    from layerboot.initrd.stage1 import localverity

    return localverity


def _tree_fetcher(trees: dict[str, bytes], calls: list[str]):  # noqa: ANN202
    def fetch_tree(tree: Layer, dest: str) -> None:
        calls.append(tree.digest)
        Path(dest).write_bytes(trees[tree.digest])
    return fetch_tree


@pytest.mark.root
def test_without_fs_verity_a_cached_layer_keeps_its_tree_and_boots_through_dm_verity(
        cache: LayerCache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel = Kernel(monkeypatch)
    layer, src, tree = _verity_layer(tmp_path, "a")
    calls: list[str] = []
    fetch_tree = _tree_fetcher({layer.verity.tree: tree}, calls)
    path = cache.admit(layer, str(src), fetch_tree=fetch_tree)
    tree_file = Path(cache.tree_path(layer.digest))
    assert tree_file.read_bytes() == tree and oct(tree_file.stat().st_mode & 0o777) == "0o444"
    assert calls == [layer.verity.tree]
    kernel.hashed.clear()
    assert cache.lookup(layer, fetch_tree) == "/dev/dm-1"       # not the file: the dm-verity device over it
    assert kernel.attached == [(path, tree.hex()[:16], layer.verity.root)] and kernel.hashed == []
    assert cache.attached == 1 and calls == [layer.verity.tree]  # the kept tree: nothing fetched again


@pytest.mark.root
def test_a_cache_without_trees_gets_them_online_and_is_re_hashed_offline_said_once(
        cache: LayerCache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel = Kernel(monkeypatch)
    (one, src1, tree1), (two, src2, tree2) = _verity_layer(tmp_path, "b"), _verity_layer(tmp_path, "c")
    for layer, src in ((one, src1), (two, src2)):
        cache.admit(layer, str(src))                              # an older stage1: no trees kept
    assert not os.path.exists(cache.tree_path(one.digest))
    lines: list[str] = []
    cache.say = lines.append
    kernel.hashed.clear()
    assert cache.lookup(one) == cache.path(one.digest) and cache.lookup(two) == cache.path(two.digest)  # offline
    assert len(kernel.hashed) == 2 and kernel.attached == []
    no_tree = [line for line in lines if "without their dm-verity trees" in line]
    assert no_tree == ["cache: cached layers without their dm-verity trees (admitted by an older stage1, or booted "
                       "offline) are re-hashed until a boot that reaches the server fetches them"]
    calls: list[str] = []
    kernel.hashed.clear()
    fetch_tree = _tree_fetcher({one.verity.tree: tree1, two.verity.tree: tree2}, calls)
    assert cache.lookup(one, fetch_tree) == "/dev/dm-1" and cache.lookup(two, fetch_tree) == "/dev/dm-2"  # online
    assert kernel.hashed == [] and sorted(calls) == sorted([one.verity.tree, two.verity.tree])
    # A tree of the wrong size is replaced; a fetch that fails leaves the layer to the re-hash, said once.
    Path(cache.tree_path(one.digest)).chmod(0o644)
    Path(cache.tree_path(one.digest)).write_bytes(b"short")

    def failing(tree: Layer, dest: str) -> None:
        Path(dest).write_bytes(b"half")
        raise OSError("connection reset")

    assert cache.lookup(one, failing) == cache.path(one.digest)
    assert lines[-1] == (f"cache: fetching the dm-verity tree of layer {one.digest[:12]} failed (connection reset); "
                         "layers without a tree are re-hashed")
    assert not os.path.exists(cache.tree_path(one.digest))
    assert not [n for n in os.listdir(cache.layers) if n.endswith(".tmp")]


@pytest.mark.root
def test_dm_verity_refusing_a_cached_layer_removes_it_and_no_dm_verity_falls_back_to_the_hash(
        cache: LayerCache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel = Kernel(monkeypatch)
    layer, src, tree = _verity_layer(tmp_path, "d")
    fetch_tree = _tree_fetcher({layer.verity.tree: tree}, [])
    cache.admit(layer, str(src), fetch_tree=fetch_tree)
    lines: list[str] = []
    cache.say = lines.append
    kernel.refuse = True
    assert cache.lookup(layer, fetch_tree) is None               # the caller fetches it again
    assert lines[-1] == (f"cache: layer {layer.digest[:12]} does not match its signed dm-verity root hash (altered "
                         "or damaged): removed, fetching it again")
    assert not os.path.exists(cache.path(layer.digest)) and not os.path.exists(cache.tree_path(layer.digest))
    kernel.refuse, kernel.absent = False, True
    cache.admit(layer, str(src), fetch_tree=fetch_tree)
    kernel.hashed.clear()
    assert cache.lookup(layer, fetch_tree) == cache.path(layer.digest)
    assert len(kernel.hashed) == 1
    assert lines[-1] == "cache: no dm-verity in this kernel (test): cached layers are re-hashed on every boot"
    assert cache.dm_verity and not cache.wants_tree(layer)      # said once; no more trees fetched on this boot


@pytest.mark.root
def test_gc_removes_trees_with_their_layers(cache: LayerCache, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    Kernel(monkeypatch)
    (keep, src1, tree1), (old, src2, tree2) = _verity_layer(tmp_path, "e"), _verity_layer(tmp_path, "f")
    fetch_tree = _tree_fetcher({keep.verity.tree: tree1, old.verity.tree: tree2}, [])
    for layer, src in ((keep, src1), (old, src2)):
        cache.admit(layer, str(src), fetch_tree=fetch_tree)
    orphan = Path(cache.layers) / ("9" * 64 + ".verity")         # a tree whose layer is gone (a power cut)
    orphan.write_bytes(b"x")
    cache.gc({keep.digest})
    assert sorted(os.listdir(cache.layers)) == sorted([keep.digest, keep.digest + ".verity"])


@pytest.mark.root
def test_fs_verity_comes_first_and_its_refusal_removes_the_layer(cache: LayerCache, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """Where fs-verity settles it (the QEMU boot: test_cache_layers_are_verified_before_use), no tree is fetched
    or attached; a wrong fs-verity digest removes the layer in one line."""
    from layerboot.initrd.stage1 import fsverity

    kernel = Kernel(monkeypatch)
    layer, src, tree = _verity_layer(tmp_path, "g")
    layer = Layer(layer.digest, layer.size, layer.path, "a" * 64, layer.verity)
    measured = {"digest": "a" * 64}
    monkeypatch.setattr(fsverity, "enable", lambda path: None)
    monkeypatch.setattr(fsverity, "measure", lambda path: measured["digest"])
    calls: list[str] = []
    fetch_tree = _tree_fetcher({layer.verity.tree: tree}, calls)
    path = cache.admit(layer, str(src), fetch_tree=fetch_tree)
    assert cache.lookup(layer, fetch_tree) == path                  # the file, checked in O(1)
    assert calls == [] and kernel.attached == [] and not os.path.exists(cache.tree_path(layer.digest))
    lines: list[str] = []
    cache.say = lines.append
    measured["digest"] = "b" * 64
    assert cache.lookup(layer, fetch_tree) is None and not os.path.exists(path)
    assert lines == [f"cache: layer {layer.digest[:12]} does not match its signed fs-verity digest (altered or "
                     "damaged): removed, fetching it again"]
