"""Decompose a distribution's live ISO into what layerboot boots: a base squashfs, a kernel and an initrd.

Live ISOs already carry a compressed root filesystem, so an admin can start from the ISO they have instead of
building a base. Layouts recognised (read with pycdlib, no mount needed):

* Debian live: ``/live/filesystem.squashfs`` + ``/live/vmlinuz*`` + ``/live/initrd.img*``
* Ubuntu: ``/casper/filesystem.squashfs`` (or ``/casper/minimal.squashfs``) + ``/casper/vmlinuz`` + ``/casper/initrd``
* Fedora/RHEL (dracut dmsquash-live): ``/LiveOS/squashfs.img`` + ``/images/pxeboot/vmlinuz`` + ``initrd.img``.
  Older ones wrap an ext4 image (``LiveOS/rootfs.img`` or ``ext3fs.img``) inside the squashfs; that image is
  loop-mounted read-only and repacked, because a node stacks overlayfs on the root tree, not on a disk image.
* Arch: ``/arch/x86_64/airootfs.sfs`` + ``/arch/boot/x86_64/vmlinuz-linux`` + ``initramfs-linux.img``

Everything is found and checked before anything is written, so a malformed ISO leaves the store untouched.
The initrd is the distribution's own (useful as a boot file to keep); nodes boot layerboot's stage1 initrd.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from layerboot.atomic import scratch_dir
from layerboot.errors import LayerbootError
from layerboot.overlays.layer import Layer
from layerboot.overlays.squashfs import SQUASHFS_MAGIC
from layerboot.overlays.store import Store
from layerboot.progress import Progress
from layerboot.run import require_tool, run

log = logging.getLogger("layerboot.iso")

# in order of preference: the first pattern that matches wins
SQUASHFS_PATTERNS = ("/live/filesystem.squashfs", "/casper/filesystem.squashfs", "/casper/minimal.squashfs",
                     "/LiveOS/squashfs.img", "/arch/*/airootfs.sfs", "*.squashfs", "*.sfs")
KERNEL_PATTERNS = ("vmlinuz*", "vmlinux*", "bzImage*")
INITRD_PATTERNS = ("initrd*", "initramfs*")
EMBEDDED_IMAGES = ("LiveOS/rootfs.img", "LiveOS/ext3fs.img")


@dataclass(frozen=True)
class IsoLayout:
    """Where the three parts are inside the ISO (paths as the ISO's Rock Ridge/Joliet/ISO 9660 names give them)."""

    squashfs: str
    kernel: str
    initrd: str


@dataclass(frozen=True)
class IsoImport:
    base: Layer
    kernel: Layer
    initrd: Layer
    layout: IsoLayout
    repacked: bool          # the root tree came from an ext4 image inside the squashfs


class IsoReader:
    """Read-only access to an ISO's files by path, whichever name space (Rock Ridge, Joliet, ISO 9660) it has."""

    def __init__(self, path: Path) -> None:
        import pycdlib
        from pycdlib.pycdlibexception import PyCdlibException
        self.path = path
        if not path.is_file():
            raise LayerbootError(f"{path} does not exist or is not a regular file")
        self._iso = pycdlib.PyCdlib()
        try:
            self._iso.open(str(path))
        except (PyCdlibException, OSError, ValueError, IndexError, KeyError) as err:
            raise LayerbootError(f"{path} is not a readable ISO 9660 image ({err})",
                                 hint="give the live ISO as downloaded (a .iso file)") from None
        pvd = self._iso.pvd
        expected, actual = pvd.space_size * pvd.logical_block_size(), path.stat().st_size
        if actual < expected:
            self._iso.close()
            raise LayerbootError(f"{path} is truncated: {actual} of the {expected} bytes its header announces",
                                 hint="the download is incomplete; fetch it again and check its checksum")
        if self._iso.has_rock_ridge():
            self._key = "rr_path"
        elif self._iso.has_joliet():
            self._key = "joliet_path"
        else:
            self._key = "iso_path"

    def close(self) -> None:
        self._iso.close()

    def _name(self, name: str) -> str:
        return name.split(";", 1)[0] if self._key == "iso_path" else name

    def files(self) -> dict[str, int]:
        """Every regular file: path -> size."""
        found: dict[str, int] = {}
        for dirname, _dirs, names in self._iso.walk(**{self._key: "/"}):
            for name in names:
                full = posixpath.join(dirname, name)
                record = self._iso.get_record(**{self._key: full})
                found[posixpath.join(dirname, self._name(name))] = record.get_data_length()
        return found

    def _raw(self, path: str) -> str:
        if self._key != "iso_path":
            return path
        # ISO 9660 names carry a version suffix: look it up in the parent directory's listing
        parent, name = posixpath.split(path)
        for _d, _ds, names in self._iso.walk(iso_path=parent or "/"):
            for candidate in names:
                if self._name(candidate) == name:
                    return posixpath.join(parent, candidate)
            break
        return path

    def _copy(self, path: str, out) -> None:  # noqa: ANN001 - a writable binary file object
        """Copy one file out of the ISO; a damaged image is one clear error, not a pycdlib traceback."""
        from pycdlib.pycdlibexception import PyCdlibException
        try:
            self._iso.get_file_from_iso_fp(out, **{self._key: self._raw(path)})
        except EOFError:
            raise
        except (PyCdlibException, OSError, ValueError) as err:
            raise LayerbootError(f"cannot read {path} from {self.path.name}: {err}",
                                 hint="the ISO may be truncated or damaged; check it against its checksum") from None

    def read_head(self, path: str, size: int) -> bytes:
        import io
        buffer = io.BytesIO()
        with contextlib.suppress(EOFError):     # _Limited stops the copy once it has enough
            self._copy(path, _Limited(buffer, size))
        return buffer.getvalue()[:size]

    def extract(self, path: str, target: Path, *, size: int | None = None) -> None:
        with open(target, "wb") as out, Progress(f"extracting {posixpath.basename(path)}", total=size) as step:
            self._copy(path, _Counted(out, step))


class _Counted:
    """A write-only file object that reports the bytes written to a Progress."""

    def __init__(self, inner, step: Progress) -> None:  # noqa: ANN001
        self.inner, self.step = inner, step

    def write(self, data: bytes) -> int:
        written = self.inner.write(data)
        self.step.advance(len(data))
        return written


class _Limited:
    """A write-only file object that stops the copy (by raising) once it holds ``limit`` bytes."""

    def __init__(self, inner, limit: int) -> None:  # noqa: ANN001
        self.inner, self.limit = inner, limit

    def write(self, data: bytes) -> int:
        self.inner.write(data)
        if self.inner.tell() >= self.limit:
            raise EOFError
        return len(data)


def _match(files: dict[str, int], patterns: tuple[str, ...], *, basename: bool) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        for path in sorted(files):
            subject = posixpath.basename(path) if basename else path
            if fnmatch.fnmatchcase(subject, pattern) and files[path] > 0 and path not in out:
                out.append(path)
    return out


def _pick(candidates: list[str], near: str, what: str) -> str:
    """Prefer a boot file next to the squashfs (or kernel), then pxeboot/ (Fedora), then the shallowest path,
    then the shortest name (Arch's initramfs-linux.img over initramfs-linux-fallback.img)."""
    def rank(path: str) -> tuple[int, int, int, str]:
        directory = posixpath.dirname(path)
        return (0 if directory == near else 1 if "pxeboot" in directory else 2, path.count("/"),
                len(posixpath.basename(path)), path)
    chosen = sorted(candidates, key=rank)[0]
    if len(candidates) > 1:
        log.info("%d %s candidates, using %s (others: %s)", len(candidates), what, chosen,
                 ", ".join(c for c in candidates if c != chosen))
    return chosen


def find_layout(reader: IsoReader, *, squashfs: str | None = None, kernel: str | None = None,
                initrd: str | None = None) -> IsoLayout:
    """Locate squashfs, kernel and initrd (explicit paths win) and check the squashfs magic."""
    files = reader.files()
    for label, given in (("--squashfs", squashfs), ("--kernel", kernel), ("--initrd", initrd)):
        if given and given not in files:
            raise LayerbootError(f"{label} {given} is not a file in {reader.path.name}")
    if squashfs is None:
        found = _match(files, SQUASHFS_PATTERNS, basename=False)
        if not found:
            raise LayerbootError(f"{reader.path.name}: no live root filesystem found (looked for "
                                 "live/filesystem.squashfs, casper/*.squashfs, LiveOS/squashfs.img, *.sfs)",
                                 hint="is this a live ISO? an installer-only ISO has no root filesystem to boot")
        squashfs = found[0]
    if reader.read_head(squashfs, 4) != SQUASHFS_MAGIC:
        raise LayerbootError(f"{reader.path.name}: {squashfs} is not a squashfs image (bad magic)")
    near = posixpath.dirname(squashfs)
    if kernel is None:
        found = _match(files, KERNEL_PATTERNS, basename=True)
        if not found:
            raise LayerbootError(f"{reader.path.name}: no kernel (vmlinuz*) found", hint="pass --kernel PATH")
        kernel = _pick(found, near, "kernel")
    if initrd is None:
        found = _match(files, INITRD_PATTERNS, basename=True)
        if not found:
            raise LayerbootError(f"{reader.path.name}: no initrd (initrd*, initramfs*) found",
                                 hint="pass --initrd PATH")
        initrd = _pick(found, posixpath.dirname(kernel), "initrd")
    return IsoLayout(squashfs=squashfs, kernel=kernel, initrd=initrd)


def embedded_image(squashfs: Path) -> str | None:
    """The ext4 image path inside a Fedora-style squashfs, if that is all the squashfs holds."""
    require_tool("unsquashfs", package="squashfs-tools")
    listing = run(["unsquashfs", "-l", "-d", "", squashfs], timeout=300).text.splitlines()
    entries = {line.strip().lstrip("/") for line in listing if line.strip().startswith("/")}
    for candidate in EMBEDDED_IMAGES:
        if candidate in entries and not (entries & {"etc", "usr", "bin", "sbin"}):
            return candidate
    return None


@contextlib.contextmanager
def _mounted_ext_image(squashfs: Path, inner: str, scratch: Path) -> Iterator[Path]:
    """Unpack the ext4 image from the squashfs and loop-mount it read-only; unmounted on exit."""
    unpacked = scratch / "unpacked"
    run(["unsquashfs", "-no-progress", "-d", unpacked, squashfs, inner], timeout=None)
    image = unpacked / inner
    mountpoint = scratch / "rootfs"
    mountpoint.mkdir()
    result = run(["mount", "-o", "loop,ro", "-t", "ext4", image, mountpoint], check=False)
    if result.returncode != 0:
        raise LayerbootError(f"cannot mount the {inner} image found inside the ISO's squashfs "
                             f"({result.stderr.decode('utf-8', 'replace').strip()})",
                             hint="this needs root and ext4 support; or unpack it yourself and "
                                  "'layerboot layer import DIR'")
    try:
        yield mountpoint
    finally:
        run(["umount", mountpoint], check=False)


def import_iso(store: Store, iso: Path, *, description: str = "", squashfs: str | None = None,
               kernel: str | None = None, initrd: str | None = None) -> IsoImport:
    """Find, check, extract and import the ISO's root filesystem (as a base layer), kernel and initrd."""
    store.require_initialized()
    reader = IsoReader(iso)
    try:
        layout = find_layout(reader, squashfs=squashfs, kernel=kernel, initrd=initrd)
        store.paths.tmp.mkdir(parents=True, exist_ok=True)
        with scratch_dir(store.paths.tmp, prefix="iso.") as tmp:
            scratch = Path(tmp)
            parts = {}
            sizes = reader.files()
            for name, path in (("squashfs", layout.squashfs), ("kernel", layout.kernel), ("initrd", layout.initrd)):
                parts[name] = scratch / name
                log.info("extracting %s from %s", path, iso.name)
                reader.extract(path, parts[name], size=sizes.get(path))
            inner = embedded_image(parts["squashfs"])
            text = description or f"{iso.name} {layout.squashfs}"
            if inner:
                log.info("%s holds an ext4 image (%s): repacking its tree as a squashfs", layout.squashfs, inner)
                with _mounted_ext_image(parts["squashfs"], inner, scratch) as tree:
                    base = store.import_tree(tree, kind="base", description=text)
            else:
                base = store.import_squashfs(parts["squashfs"], kind="base", description=text,
                                             source=f"iso:{iso}:{layout.squashfs}", move=True)
            kernel_layer = store.import_boot_file(parts["kernel"], kind="kernel",
                                                  description=f"{iso.name} {layout.kernel}")
            initrd_layer = store.import_boot_file(parts["initrd"], kind="initrd",
                                                  description=f"{iso.name} {layout.initrd}")
    finally:
        reader.close()
    return IsoImport(base=base, kernel=kernel_layer, initrd=initrd_layer, layout=layout, repacked=inner is not None)
