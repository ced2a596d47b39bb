"""Boot the chain of an A/B disk slot (``layerboot.slot=``), used by stage1 inside the initramfs.

Stdlib only, nothing done at import. The slot layout and the contract are in docs/install.md ("What is in a
slot"): ``manifest.json`` (the signed envelope, byte for byte), ``layers/<sha256>`` (the chain, order from the
manifest) with ``layers/<sha256>.verity`` next to each (its dm-verity hash tree, the object the signed manifest
names), ``boot/`` (GRUB's business). Stage1 mounts the slot read-only (``ext4 -o ro,noload``: not even the
journal is replayed, so a slot stays byte-identical to what ``layerboot ab`` verified), verifies the manifest
with the key baked into the initrd exactly like a downloaded one, and hands out every layer checked against it:
as a dm-verity device over the file and its tree with the signed root hash (localverity.py: nothing hashed up
front, every block checked as it is read, a block altered on the disk reads as EIO); for a slot written before
trees were put there, or a kernel without dm-verity, by the file's fs-verity digest in O(1) when it has one
(fsverity.py), else by hashing the whole file (hashing.py's fast path) before it is loop-mounted.
The slot stays mounted: the loop devices hold its files, and the mount moves with /run into the new root.

Finding the device reuses the cache's udev-free lookup (``cache.resolve_device``: a path, ``LABEL=``, ``UUID=``);
``PARTLABEL=`` (the GPT partition name, ``layerboot-a``/``layerboot-b`` on an A/B disk) is read from the GPT of
the partition's parent disk, because partitions added by ``partx``/BLKPG carry no name in sysfs.
"""

from __future__ import annotations

import os

from .cache import CacheError, _mount_argv, _spawn, ext4_identity, resolve_device

SLOT_MOUNTPOINT = "/run/layerboot/slot"
MANIFEST_FILE = "manifest.json"
LAYERS = "layers"
MANIFEST_LIMIT = 1 << 20
GPT_SIGNATURE = b"EFI PART"


class SlotError(Exception):
    """Why this slot cannot be booted: one line for the console (the boot then fails, so GRUB falls back)."""


def _say(text: str) -> None:
    os.write(2, f"layerboot: slot: {text}\n".encode("utf-8", "replace"))


# -- finding the device ------------------------------------------------------------------------------------
def gpt_partition_name(disk: str, number: int, sector: int = 512) -> str | None:
    """The GPT name of partition ``number`` (1-based) on ``disk``; None without a GPT or such an entry."""
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        header = os.pread(fd, 92, sector)
        if len(header) < 92 or header[:8] != GPT_SIGNATURE:
            return None
        first = int.from_bytes(header[72:80], "little")
        count = int.from_bytes(header[80:84], "little")
        size = int.from_bytes(header[84:88], "little")
        if not 1 <= number <= count or size < 128:
            return None
        entry = os.pread(fd, 128, first * sector + (number - 1) * size)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(entry) < 128 or entry[:16] == bytes(16):          # an unused entry has a zero type GUID
        return None
    return entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]


def _read_sys(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def resolve_partlabel(name: str, *, dev: str = "/dev", sys_block: str = "/sys/class/block") -> str | None:
    """The partition whose GPT name is ``name`` (udev's by-partlabel link when present, else read the GPT)."""
    link = os.path.join(dev, "disk", "by-partlabel", name)
    if os.path.exists(link):
        return os.path.realpath(link)
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return None
    for part in names:
        number = _read_sys(os.path.join(sys_block, part, "partition"))
        if not number.isdigit():
            continue
        disk = os.path.basename(os.path.dirname(os.path.realpath(os.path.join(sys_block, part))))
        sector = _read_sys(os.path.join(sys_block, disk, "queue", "logical_block_size"))
        found = gpt_partition_name(os.path.join(dev, disk), int(number), int(sector) if sector.isdigit() else 512)
        if found == name and os.path.exists(os.path.join(dev, part)):
            return os.path.join(dev, part)
    return None


def resolve_slot(spec: str, *, dev: str = "/dev", sys_block: str = "/sys/class/block") -> str | None:
    """A device path for ``/dev/X``, ``LABEL=``, ``UUID=`` or ``PARTLABEL=``; None when nothing matches (yet)."""
    kind, _, wanted = spec.partition("=")
    if kind == "PARTLABEL" and wanted:
        return resolve_partlabel(wanted, dev=dev, sys_block=sys_block)
    try:
        return resolve_device(spec, dev=dev, sys_block=sys_block)
    except CacheError:
        raise SlotError(f"layerboot.slot={spec!r}: use a device path, LABEL=, UUID= or PARTLABEL=") from None


# -- the slot ----------------------------------------------------------------------------------------------
class Slot:
    """A mounted, verified slot: ``manifest`` is the checked BootManifest, ``layer_paths()`` the chain."""

    def __init__(self, root: str, manifest, envelope: bytes, device: str | None = None,  # noqa: ANN001
                 say=_say) -> None:  # noqa: ANN001
        self.root = root
        self.manifest = manifest          # verify.BootManifest
        self.envelope = envelope
        self.device = device              # set when open_slot mounted it: close() unmounts
        self.say = say
        self.dm_names: list[str] = []     # dm-verity devices made by layer_paths (close() removes unused ones)
        self._no_dm = ""                  # why dm-verity cannot be used on this boot (said once)
        self._old = False                 # a layer without its tree in the slot was met (said once)

    def layer_paths(self, *, dm_verity: bool = True):  # noqa: ANN201 - Iterator[str]; no typing in the initramfs
        """Each layer, base first, as something ``system.stack`` mounts: a dm-verity device over the slot's file
        when the signed manifest names the layer's tree and the slot holds it (nothing hashed up front; every
        block is checked as it is read), else the file, yielded only after its fs-verity digest or its sha256
        matches the signed manifest (slots written before trees were, or without dm-verity in the kernel)."""
        import time

        started, attached, checked = time.monotonic(), 0, 0
        for layer in self.manifest.layers:
            path = os.path.join(self.root, LAYERS, layer.digest)
            try:
                size = os.stat(path).st_size
            except OSError:
                raise SlotError(f"layer {layer.digest[:12]} named by the signed manifest is missing from the "
                                f"slot ({path})") from None
            if size != layer.size:
                raise SlotError(f"layer {layer.digest[:12]} in the slot has {size} bytes, the signed manifest "
                                f"says {layer.size}: the slot was altered or damaged")
            device = self._dm_verity(layer, path) if dm_verity else None
            if device is not None:
                attached += 1
                yield device
                continue
            checked += 1
            by_verity = _verity_verdict(path, layer)
            if by_verity is False:
                raise SlotError(f"layer {layer.digest[:12]} in the slot does not match its signed fs-verity digest; "
                                "the slot was altered or damaged")
            if by_verity is None:
                from .hashing import hash_file

                got, _ = hash_file(path)
                if got != layer.digest:
                    raise SlotError(f"layer {layer.digest[:12]} in the slot failed verification: sha256 "
                                    f"{got[:12]}; the slot was altered or damaged")
            yield path
        if attached:
            self.say(f"{attached} layers attached through dm-verity in {time.monotonic() - started:.2f} s "
                     f"(signed root hashes, every block checked as it is read), {checked} checked whole")

    def _dm_verity(self, layer, path: str) -> str | None:  # noqa: ANN001 - verify.Layer
        """The layer's dm-verity device, or None (after saying why, once) to check the file whole instead."""
        from .localverity import LocalVerityError, VerityRefused, VerityUnavailable, attach, load_modules, tree_path

        verity = getattr(layer, "verity", None)
        tree = tree_path(path)
        if self._no_dm or verity is None:
            return None
        if not os.path.exists(tree):
            if not self._old:
                self._old = True
                self.say("this slot holds no dm-verity trees (written before 'layerboot ab' put them there): its "
                         "layers are checked whole (fs-verity, else sha256) on every boot; 'layerboot ab update' "
                         "writes them")
            return None
        try:
            load_modules()
            name = f"layerboot-slot-{layer.digest[:16]}"
            device = attach(path, tree, layer.size, verity.root, verity.tree_size, name=name)
        except VerityUnavailable as err:
            self._no_dm = str(err)
            self.say(f"{err}: layers are checked whole (fs-verity, else sha256)")
            return None
        except VerityRefused as err:
            raise SlotError(f"layer {layer.digest[:12]} in the slot: {err}; the slot was altered or damaged") \
                from None
        except LocalVerityError as err:
            self.say(f"layer {layer.digest[:12]}: not attached through dm-verity ({err}); checking it whole")
            return None
        self.dm_names.append(name)
        return device

    def close(self) -> None:
        """Remove the dm-verity devices and unmount when open_slot mounted it (only when nothing is mounted from
        them). Safe to call twice."""
        from .dm import DmError, remove

        while self.dm_names:
            try:
                remove(self.dm_names[-1])
            except (DmError, OSError) as err:
                raise SlotError(f"removing {self.dm_names[-1]} failed: {err}") from None
            self.dm_names.pop()
        if self.device is not None:
            code, output = _spawn(_mount_argv("umount", self.root))
            if code:
                raise SlotError(f"unmounting the slot at {self.root} failed: {output or code}")
            self.device = None


def _verity_verdict(path: str, layer) -> bool | None:  # noqa: ANN001 - verify.Layer
    """Whether the file's fs-verity digest is the signed one; None when either side has none (hash instead)."""
    if not getattr(layer, "fsverity", ""):
        return None
    from .fsverity import VerityUnsupported, measure

    try:
        measured = measure(path)
    except (VerityUnsupported, OSError):
        return None
    return None if measured is None else measured == layer.fsverity


def read_manifest(root: str, public: bytes, *, min_serial: int = 0, profile: str = "",  # noqa: ANN201
                  node: str = ""):
    """Verify ``root/manifest.json`` with the trusted key (and its profile/node binding: verify.check_binding);
    returns (BootManifest, envelope bytes); SlotError names what is wrong."""
    from .verify import VerifyError, verify_envelope

    path = os.path.join(root, MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            envelope = f.read(MANIFEST_LIMIT + 1)
    except FileNotFoundError:
        raise SlotError(f"the slot has no {MANIFEST_FILE} (not an installed slot, or its write was "
                        "interrupted)") from None
    except OSError as err:
        raise SlotError(f"cannot read {path}: {err.strerror}") from None
    if len(envelope) > MANIFEST_LIMIT:
        raise SlotError(f"{path} is larger than {MANIFEST_LIMIT} bytes: not a signed manifest")
    try:
        return verify_envelope(envelope, public, min_serial=min_serial, profile=profile, node=node,
                               source="the slot's manifest"), envelope
    except VerifyError as err:
        raise SlotError(f"{MANIFEST_FILE} in the slot: {err}") from None


def open_slot(spec: str, public: bytes, mountpoint: str = SLOT_MOUNTPOINT, *, min_serial: int = 0,
              wait: float = 10.0, say=_say, profile: str = "", node: str = "") -> Slot:  # noqa: ANN001
    """Find, mount read-only and verify the slot named by ``layerboot.slot=``; SlotError (one line) if it can't.

    Waits up to ``wait`` seconds for the device (disk drivers probe asynchronously). Never writes to the slot.
    """
    import time

    deadline = time.monotonic() + wait
    device = resolve_slot(spec)
    while device is None and time.monotonic() < deadline:
        time.sleep(0.1)
        device = resolve_slot(spec)
    if device is None:
        raise SlotError(f"no device matches layerboot.slot={spec} after {wait:.0f} s")
    if ext4_identity(device) is None:
        raise SlotError(f"{device} (layerboot.slot={spec}) holds no ext4 filesystem: not an installed slot")
    os.makedirs(mountpoint, exist_ok=True)
    code, output = _spawn(_mount_argv("mount", "-t", "ext4", "-o", "ro,noload", device, mountpoint))
    if code:
        raise SlotError(f"mounting {device} read-only failed: {output or code}")
    try:
        manifest, envelope = read_manifest(mountpoint, public, min_serial=min_serial, profile=profile, node=node)
    except BaseException:
        _spawn(_mount_argv("umount", mountpoint))
        raise
    say(f"{device} mounted read-only at {mountpoint}")
    return Slot(mountpoint, manifest, envelope, device=device, say=say)


def open_boot_slot(spec: str, key_path: str, cache=None, *, say=_say, profile: str = "",  # noqa: ANN001
                   node: str = "") -> Slot:
    """What stage1 does for ``layerboot.slot=``: the trusted key, the cache's serial floor when there is a cache,
    the profile named by ``layerboot.profile=`` (the slot's GRUB entry sets it).

    The slot's serial is checked against the cache but not recorded in it: GRUB falling back to the older slot
    after a failed update must still boot (anti-replay across slots is ``layerboot ab update``'s job, which
    refuses a serial lower than the newest slot on the disk).
    """
    from .verify import VerifyError, load_public_key

    try:
        public = load_public_key(key_path)
    except VerifyError as err:
        raise SlotError(str(err)) from None
    min_serial = cache.last_serial() if cache is not None else 0
    return open_slot(spec, public, min_serial=min_serial, say=say, profile=profile, node=node)
