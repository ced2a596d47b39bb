"""The node's local layer cache (``layerboot.cache=``), used by stage1 inside the initramfs.

Stdlib only, nothing done at import, no imports outside ``os``/``stat`` until a function needs them.

A cache is an ext4 filesystem (a partition, a whole disk, or the ``layerboot-data`` partition of an A/B
install) named on the kernel command line as a device path, ``LABEL=name`` or ``UUID=uuid``. Inside the
initramfs there is usually no udev and so no /dev/disk/by-*: names are resolved by reading the ext4 superblock
of every block device listed in /sys/class/block (devtmpfs provides the /dev nodes). The cache is never
formatted here: a device without ext4 is reported in one line and the boot goes on without a cache
(``mkfs.ext4 -L layerboot-cache DEV`` makes one).

Layout (root of the cache filesystem)::

    layers/<sha256>        a verified layer, read-only; with fs-verity on when the filesystem has the feature
                           and the signed manifest names the layer's fs-verity digest
    layers/<sha256>.verity its dm-verity hash tree (the object the signed manifest names, sha256-checked when
                           it was fetched), kept only when fs-verity does not check the layer
    stream/<sha256>        a streamed layer's blocks read so far (``layerboot.fetch=stream``): a sparse file laid
                           out like its block device (the layer, then its dm-verity tree); holes are blocks
                           never read. Written by the stream daemon (streamd.py), checked on every read by
                           dm-verity above it, like the network's bytes
    manifest.json          the last accepted signed manifest envelope, byte for byte
    previous-manifest.json the one accepted before it (garbage collection keeps both generations' layers)
    last-serial            the last accepted serial: the same file and format as verify.SerialCache
    *.tmp                  an interrupted write (power cut): never used, removed when the cache is opened

Every write is temp file, fsync, rename, fsync of the directory: a power cut leaves the old state or the new.

Nothing on the cache disk is trusted: root on the node (or anyone with the disk) can change any byte of it and
put the mtime back. So every cached layer is checked against the signed manifest before it is used, in this order:

1. in O(1) by its fs-verity digest when the filesystem has fs-verity (``mkfs.ext4 -O verity``; the kernel then
   checks every block as it is read) and the manifest names the digest;
2. else through dm-verity when the manifest names the layer's tree and the cache holds it (``.verity``): the
   layer file and the tree are attached as a dm-verity device with the signed root hash (localverity.py), the
   boot mounts ``/dev/dm-N``, and the kernel checks every block as it is read; nothing is hashed up front. A
   layer admitted without its tree (an older stage1) gets it on the next boot that can reach the server;
3. else by hashing the whole file (hashing.py's fast path).

A layer that fails is removed and fetched again. docs/stage1.md ("Cached layers") has the figures.
"""

from __future__ import annotations

import os

CACHE_MOUNTPOINT = "/run/layerboot/cache"
SERIAL_FILE = "last-serial"
MANIFEST_FILE = "manifest.json"
PREVIOUS_FILE = "previous-manifest.json"
LAYERS = "layers"
STREAM = "stream"
TREE_SUFFIX = ".verity"   # localverity.TREE_SUFFIX (not imported: this module loads nothing at import)
RECORD_SUFFIX = ".ok"     # hash records of older versions (size + mtime: forgeable); removed by gc
TMP_SUFFIX = ".tmp"
EXT_MAGIC = 0xEF53
BUSYBOX = "/bin/busybox"
_HEX = frozenset("0123456789abcdef")


class CacheError(Exception):
    """A cache problem the caller reports in one line (the boot can go on without the cache)."""


def _say(text: str) -> None:
    os.write(2, f"layerboot: {text}\n".encode("utf-8", "replace"))


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or len(digest) != 64 or not _HEX.issuperset(digest):
        raise CacheError(f"invalid sha256 digest {digest!r}")
    return digest


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


# -- finding the device ------------------------------------------------------------------------------------
def ext4_identity(device: str) -> tuple[str, str] | None:
    """(uuid, label) from an ext2/3/4 superblock, or None when the device holds no such filesystem."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        block = os.pread(fd, 1024, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(block) < 0x88 or int.from_bytes(block[0x38:0x3A], "little") != EXT_MAGIC:
        return None
    raw = block[0x68:0x78].hex()
    uuid = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    label = block[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
    return uuid, label


def resolve_device(spec: str, *, dev: str = "/dev", sys_block: str = "/sys/class/block") -> str | None:
    """A device path for ``/dev/X``, ``LABEL=x`` or ``UUID=x``; None when nothing matches (yet)."""
    if spec.startswith("/"):
        return spec if os.path.exists(spec) else None
    kind, _, wanted = spec.partition("=")
    if kind not in ("LABEL", "UUID") or not wanted:
        raise CacheError(f"layerboot.cache={spec!r}: use a device path, LABEL=name or UUID=uuid")
    link = os.path.join(dev, "disk", "by-" + kind.lower(), wanted)
    if os.path.exists(link):                        # udev made it: trust it
        return os.path.realpath(link)
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return None
    for name in names:
        node = os.path.join(dev, name)
        identity = ext4_identity(node) if os.path.exists(node) else None
        if identity and (identity[0] == wanted.lower() if kind == "UUID" else identity[1] == wanted):
            return node
    return None


def _spawn(argv: list[str]) -> tuple[int, str]:
    """Run mount/umount with stage1's child runner (imported only when a cache is used)."""
    from .console import spawn

    return spawn(argv, quiet=True)


def _mount_argv(*args: str) -> list[str]:
    if os.path.exists(BUSYBOX):
        return [BUSYBOX, *args]
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if os.path.exists(os.path.join(directory, args[0])):
            return [os.path.join(directory, args[0]), *args[1:]]
    return list(args)


def open_cache(spec: str, mountpoint: str = CACHE_MOUNTPOINT, *, wait: float = 5.0,
               say=_say) -> "LayerCache | None":  # noqa: ANN001 - say(str) -> None
    """Mount the cache named by ``layerboot.cache=`` and return it; None (after one line) when it cannot be used.

    Waits up to ``wait`` seconds for the device to appear (disk drivers probe asynchronously). Never formats.
    """
    import time

    try:
        deadline = time.monotonic() + wait
        device = resolve_device(spec)
        while device is None and time.monotonic() < deadline:
            time.sleep(0.1)
            device = resolve_device(spec)
    except CacheError as err:
        say(f"cache: {err}; booting without a cache")
        return None
    if device is None:
        say(f"cache: no device matches layerboot.cache={spec} after {wait:.0f} s; booting without a cache")
        return None
    if ext4_identity(device) is None:
        say(f"cache: {device} has no ext4 filesystem (not formatted?); booting without a cache "
            f"(to make one: mkfs.ext4 -L layerboot-cache {device})")
        return None
    os.makedirs(mountpoint, exist_ok=True)
    code, output = _spawn(_mount_argv("mount", "-t", "ext4", "-o", "rw,noatime", device, mountpoint))
    if code:
        say(f"cache: mounting {device} failed ({output or code}); booting without a cache")
        return None
    try:
        return LayerCache(mountpoint, device=device, say=say)
    except (OSError, CacheError) as err:
        _spawn(_mount_argv("umount", mountpoint))
        say(f"cache: {device} cannot be used as a cache ({err}); booting without a cache")
        return None


# -- the cache ---------------------------------------------------------------------------------------------
class LayerCache:
    """Verified layers and the last accepted manifest under ``root`` (the mounted cache filesystem)."""

    def __init__(self, root: str, *, device: str | None = None, say=_say) -> None:  # noqa: ANN001
        import _thread   # a builtin: no import cost

        self.root = root
        self.device = device              # set when open_cache mounted it: close() unmounts
        self.layers = os.path.join(root, LAYERS)
        self.say = say
        self.verity: bool | None = None   # fs-verity here: None until tried, False after the first refusal
        self.dm_verity = ""               # why dm-verity cannot be used on this boot ("" while it can)
        self.dm_names: list[str] = []     # dm-verity devices made for cached layers
        self._lock = _thread.allocate_lock()   # serialises loading the dm modules (lookups run on fetch threads)
        self.attached = 0                 # cached layers attached through dm-verity on this boot
        self._said: set[str] = set()
        os.makedirs(self.layers, exist_ok=True)
        self.cleaned = self._clean_leftovers()

    def _clean_leftovers(self) -> int:
        """Remove what an interrupted write left behind; returns how many files."""
        removed = 0
        for directory in (self.root, self.layers):
            for name in os.listdir(directory):
                if name.endswith(TMP_SUFFIX):   # layers and trees (.DIGEST.tmp, .DIGEST.verity.tmp)
                    os.unlink(os.path.join(directory, name))
                    removed += 1
        return removed

    def path(self, digest: str) -> str:
        return os.path.join(self.layers, _check_digest(digest))

    def stream_file(self, digest: str, size: int) -> int:
        """An open read-write fd of the layer's sparse stream file (``size`` bytes, made or resized here), for the
        stream daemon; -1 after one line when it cannot be had (the layer is then streamed without it)."""
        directory = os.path.join(self.root, STREAM)
        path = os.path.join(directory, _check_digest(digest))
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            self._once("stream", f"cannot keep streamed blocks in {directory} ({err.strerror}); streaming without")
            return -1
        try:
            if os.fstat(fd).st_size != size:   # a new layer, or a file cut short: it never holds wrong sizes
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
        except OSError as err:
            os.close(fd)
            self._once("stream", f"cannot size {path} ({err.strerror}); streaming without the cache")
            return -1
        return fd

    def tmp_path(self, digest: str) -> str:
        """Where a caller may download a layer on the cache filesystem, so ``admit`` only renames it."""
        return os.path.join(self.layers, f".{_check_digest(digest)}{TMP_SUFFIX}")

    def tree_path(self, digest: str) -> str:
        return self.path(digest) + TREE_SUFFIX

    def _once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.say(f"cache: {text}")

    def _no_verity(self, why: str) -> None:
        self.verity = False
        self._once("verity", f"no fs-verity on the cache filesystem ({why}): cached layers are checked through "
                             "their dm-verity trees (else re-hashed on every boot); 'tune2fs -O verity DEVICE' "
                             "(unmounted) or 'mkfs.ext4 -O verity' makes it O(1)")

    # -- layers ---------------------------------------------------------------------------------------------
    def _forget(self, digest: str) -> None:
        for path in (self.path(digest), self.path(digest) + RECORD_SUFFIX, self.tree_path(digest)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _by_verity(self, layer, path: str) -> bool | None:  # noqa: ANN001 - verify.Layer
        """True/False when fs-verity settles whether ``path`` is ``layer``; None when it cannot (hash instead)."""
        from .fsverity import VerityUnsupported, enable, measure

        if not getattr(layer, "fsverity", ""):
            self._once("no-digest", "the signed manifest names no fs-verity digests (an older server): cached "
                                    "layers are checked through their dm-verity trees (else re-hashed on every "
                                    "boot)")
            return None
        if self.verity is False:
            return None
        try:
            measured = measure(path)
            if measured is None:           # admitted without fs-verity (older stage1): turning it on hashes once
                enable(path)
                measured = measure(path)
        except VerityUnsupported as err:
            self._no_verity(str(err))
            return None
        except OSError as err:
            self._once("verity-error", f"fs-verity failed on {path} ({err.strerror or err}); re-hashing instead")
            return None
        self.verity = True
        return measured == layer.fsverity

    def lookup(self, layer, fetch_tree=None) -> str | None:  # noqa: ANN001 - verify.Layer, callable
        """What to mount for the cached ``layer`` when it is there and is exactly the signed one, else None: the
        file (checked by fs-verity or hashed whole) or a dm-verity device over it (``/dev/dm-N``).

        ``fetch_tree(tree_layer, dest)`` downloads a tree object to ``dest`` checked against its signed size and
        sha256 (fetch.py; None when the server cannot be reached): a layer whose tree is missing gets it here.
        A file that is not the signed layer (altered, truncated, replaced, not a regular file) is removed with
        one line, so the caller fetches it again.
        """
        import stat

        path = self.path(layer.digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_size != layer.size:
            why = f"has {st.st_size} bytes, the signed manifest says {layer.size}"
        else:
            verdict, why = self._by_verity(layer, path), ""
            if verdict is None:
                device, why = self._by_dm_verity(layer, path, fetch_tree)
                if device:
                    return device
                verdict = False if why else None
            if verdict is None:
                from .hashing import hash_file

                digest, _ = hash_file(path)
                verdict = digest == layer.digest
                why = f"hashes to {digest[:12]}"
            elif verdict is False and not why:
                why = "does not match its signed fs-verity digest"
            if verdict:
                return path
        self.say(f"cache: layer {layer.digest[:12]} {why} (altered or damaged): removed, fetching it again")
        self._forget(layer.digest)
        return None

    # -- dm-verity trees ------------------------------------------------------------------------------------
    def wants_tree(self, layer) -> bool:  # noqa: ANN001 - verify.Layer
        """Whether a cached layer should have its dm-verity tree next to it: the manifest names one, fs-verity
        does not check this layer, and this boot can use dm-verity."""
        if getattr(layer, "verity", None) is None or self.dm_verity:
            return False
        if getattr(layer, "fsverity", "") and self.verity:
            return False
        return True

    def keep_tree(self, layer, fetch_tree) -> bool:  # noqa: ANN001 - verify.Layer, callable
        """Make sure ``layers/DIGEST.verity`` holds the layer's signed tree; True when it does. A tree of the
        wrong size is removed; a missing one is fetched with ``fetch_tree`` (when given) and renamed in."""
        tree = self.tree_path(layer.digest)
        want = layer.verity.tree_size
        try:
            if os.stat(tree).st_size == want:
                return True
            os.unlink(tree)
        except FileNotFoundError:
            pass
        if fetch_tree is None:
            return False
        from .verify import Layer

        tmp = os.path.join(self.layers, f".{layer.digest}{TREE_SUFFIX}{TMP_SUFFIX}")
        try:
            fetch_tree(Layer(layer.verity.tree, want, layer.verity.tree_path), tmp)
            os.chmod(tmp, 0o444)
            os.rename(tmp, tree)
            _fsync_dir(self.layers)
        except Exception as err:  # noqa: BLE001 - a tree is an optimisation: without it the layer is hashed
            if os.path.exists(tmp):
                os.unlink(tmp)
            self._once("tree-fetch", f"fetching the dm-verity tree of layer {layer.digest[:12]} failed ({err}); "
                                     "layers without a tree are re-hashed")
            return False
        return True

    def attach(self, layer) -> str:  # noqa: ANN001 - verify.Layer
        """The cached layer and its tree as a dm-verity device with the signed root (localverity.attach);
        raises LocalVerityError (VerityUnavailable: this kernel cannot, VerityRefused: wrong bytes)."""
        from .localverity import attach, load_modules

        with self._lock:
            load_modules()
        name = f"layerboot-cache-{layer.digest[:16]}"
        device = attach(self.path(layer.digest), self.tree_path(layer.digest), layer.size, layer.verity.root,
                        layer.verity.tree_size, name=name)
        self.dm_names.append(name)
        return device

    def _by_dm_verity(self, layer, path: str, fetch_tree) -> tuple[str, str]:  # noqa: ANN001
        """(device, "") when the layer is attached through dm-verity; ("", why) when dm-verity refuses it (the
        caller removes it); ("", "") when dm-verity cannot decide (no tree, no dm-verity: hash it instead)."""
        from .localverity import LocalVerityError, VerityRefused, VerityUnavailable

        if not self.wants_tree(layer):
            return "", ""
        if not self.keep_tree(layer, fetch_tree):
            self._once("no-tree", "cached layers without their dm-verity trees (admitted by an older stage1, or "
                                  "booted offline) are re-hashed until a boot that reaches the server fetches them")
            return "", ""
        try:
            device = self.attach(layer)
        except VerityUnavailable as err:
            self.dm_verity = str(err)
            self._once("no-dm", f"{err}: cached layers are re-hashed on every boot")
            return "", ""
        except VerityRefused:
            return "", "does not match its signed dm-verity root hash"
        except LocalVerityError as err:
            self._once("dm-" + layer.digest, f"layer {layer.digest[:12]}: not attached through dm-verity ({err}); "
                                             "re-hashing it")
            return "", ""
        self.attached += 1
        return device, ""

    def admit(self, layer, src_path: str, *, verified: bool = False,  # noqa: ANN001 - verify.Layer
              fetch_tree=None) -> str:  # noqa: ANN001 - fetch_tree(tree_layer, dest), see lookup
        """Put a layer into the cache and return its cache path.

        A source on the cache filesystem (see :meth:`tmp_path`) is renamed in; anything else is copied. Unless
        the caller says it hashed exactly these bytes itself (``verified``: fetch.py's own download), the bytes
        are hashed on the way in, so a wrong digest never enters the cache. Then fs-verity is turned on when
        the manifest names the layer's fs-verity digest (the kernel hashes the file once more), so later boots
        check it in O(1); where it cannot be, the layer's dm-verity tree is fetched (``fetch_tree``) and kept
        next to it, so later boots attach it through dm-verity instead of re-hashing it.
        """
        from .hashing import hash_file

        digest = layer.digest
        final = self.path(digest)
        same_fs = os.stat(src_path).st_dev == os.stat(self.layers).st_dev
        if same_fs:
            if not verified and hash_file(src_path)[0] != digest:
                raise CacheError(f"{src_path} does not hash to {digest[:12]}")
            fd = os.open(src_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(src_path, final)
        else:
            tmp = self.tmp_path(digest)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                got, _ = hash_file(src_path, copy_to=fd)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
            if got != digest:
                os.unlink(tmp)
                raise CacheError(f"{src_path} does not hash to {digest[:12]}")
            os.rename(tmp, final)
        os.chmod(final, 0o444)
        _fsync_dir(self.layers)
        if not self._seal(layer, final) and self.wants_tree(layer):
            self.keep_tree(layer, fetch_tree)
        return final

    def admit_unhashed(self, layer, src_path: str, fetch_tree) -> str:  # noqa: ANN001 - verify.Layer, callable
        """``layerboot.verify=blocks``: rename a download that was not hashed (``src_path``, on the cache
        filesystem) in, fetch its tree, and return the dm-verity device the boot mounts (every block checked by
        the kernel as it is read). CacheError when it cannot be attached: the layer is removed again."""
        from .localverity import LocalVerityError

        final = self.path(layer.digest)
        os.chmod(src_path, 0o444)
        os.rename(src_path, final)
        _fsync_dir(self.layers)
        try:
            if not self.keep_tree(layer, fetch_tree):
                raise LocalVerityError("its dm-verity tree could not be fetched")
            device = self.attach(layer)
        except LocalVerityError as err:
            self._forget(layer.digest)
            raise CacheError(f"layer {layer.digest[:12]}: {err}") from None
        return device

    def _seal(self, layer, path: str) -> bool:  # noqa: ANN001 - verify.Layer
        """Turn fs-verity on for a verified layer and check the signed digest describes it; True when on."""
        from .fsverity import VerityUnsupported, enable, measure

        if not getattr(layer, "fsverity", "") or self.verity is False:
            return False
        try:
            enable(path)
            measured = measure(path)
        except VerityUnsupported as err:
            self._no_verity(str(err))
            return False
        except OSError as err:
            self.say(f"cache: turning fs-verity on for layer {layer.digest[:12]} failed ({err.strerror or err}); "
                     "it is re-hashed on later boots")
            return False
        self.verity = True
        if measured != layer.fsverity:   # sha256 matched, so the server's fs-verity digest is wrong
            self.say(f"cache: layer {layer.digest[:12]}: its fs-verity digest is {str(measured)[:12]}, the signed "
                     f"manifest says {layer.fsverity[:12]} (a server bug): it will be fetched again next boot")
        return True

    def digests(self) -> set[str]:
        return {n for n in os.listdir(self.layers) if len(n) == 64 and _HEX.issuperset(n)}

    def gc(self, keep: set[str]) -> int:
        """Remove every cached layer not in ``keep``; returns the bytes freed."""
        freed = 0
        present = self.digests()
        for digest in present - set(keep):
            try:
                freed += os.stat(self.path(digest)).st_size
            except FileNotFoundError:
                continue
            self._forget(digest)
        kept = self.digests()
        for name in os.listdir(self.layers):        # (size, mtime) records of older versions: never trusted now
            if name.endswith(RECORD_SUFFIX) or (name.endswith(TREE_SUFFIX)   # and trees without their layer
                                                and name[:-len(TREE_SUFFIX)] not in kept):
                os.unlink(os.path.join(self.layers, name))
        _fsync_dir(self.layers)
        streamed = os.path.join(self.root, STREAM)
        for name in os.listdir(streamed) if os.path.isdir(streamed) else ():
            if name not in keep:
                path = os.path.join(streamed, name)
                freed += os.stat(path).st_blocks * 512
                os.unlink(path)
        return freed

    # -- manifests ------------------------------------------------------------------------------------------
    def last_serial(self) -> int:
        """The last accepted serial (0 when none); an unreadable file is an error, never a guess."""
        try:
            with open(os.path.join(self.root, SERIAL_FILE), encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise CacheError(f"{SERIAL_FILE} in the cache is unreadable ({err}); refusing to guess") from None

    def accept(self, serial: int, envelope: bytes) -> None:
        """Remember a manifest the caller verified; a lower serial than the last one is refused.

        The manifest is written before the serial: after a power cut in between, the stored manifest has a
        serial at least as high as ``last-serial``, so it still verifies offline.
        """
        last = self.last_serial()
        if serial < last:
            raise CacheError(f"refusing manifest serial {serial}: lower than the last accepted {last}")
        current = self.last_manifest()
        if current is not None and current != envelope and serial > last:
            _write_atomic(os.path.join(self.root, PREVIOUS_FILE), current)
        _write_atomic(os.path.join(self.root, MANIFEST_FILE), envelope)
        if serial != last:
            _write_atomic(os.path.join(self.root, SERIAL_FILE), f"{serial}\n".encode("ascii"))

    def last_manifest(self) -> bytes | None:
        """The last accepted envelope, for an offline boot (the caller verifies it again with its key)."""
        return _read(os.path.join(self.root, MANIFEST_FILE))

    def previous_manifest(self) -> bytes | None:
        return _read(os.path.join(self.root, PREVIOUS_FILE))

    def generation_digests(self) -> set[str]:
        """Layer digests named by the current and the previous stored manifests: what ``gc`` should keep."""
        from .jsonlite import loads   # not the json package: it pulls re and ~20 modules into the boot

        keep: set[str] = set()
        for envelope in (self.last_manifest(), self.previous_manifest()):
            try:
                payload = loads(loads(envelope.decode("utf-8"))["payload"]) if envelope else {}
                keep.update(item["digest"] for item in payload.get("layers", []))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return {d for d in keep if isinstance(d, str) and len(d) == 64 and _HEX.issuperset(d)}

    def close(self) -> None:
        """Flush, and unmount when open_cache mounted it. Safe to call twice."""
        os.sync()
        if self.device is not None:
            code, output = _spawn(_mount_argv("umount", self.root))
            if code:
                raise CacheError(f"unmounting the cache at {self.root} failed: {output or code}")
            self.device = None

    def __enter__(self) -> "LayerCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
