"""Debian kernels for nodes: download + unpack into a cache dir (``apt-get download``, ``dpkg -x``, depmod), or
take the kernel out of a base layer (``initrd build --kernel-from LAYER``).

Two flavours come from Debian's metapackages, whose single dependency names the real image package:

* ``generic``: ``linux-image-amd64`` -> ``linux-image-<abi>-amd64``, every driver Debian builds (the default
  for real hardware; ~100 MB of modules);
* ``cloud``: ``linux-image-cloud-amd64`` -> ``linux-image-<abi>-cloud-amd64``, VM drivers only (small, fast).

Both image packages are Debian's signed ones: the bzImage carries Debian's Secure Boot signature and every
module is signed (docs/hardware.md). The unpacked tree is kept under ``cache/<version>/`` and reused; nothing is
installed on the host, and the download goes through the host's normal apt sources. A kernel taken from a layer
is unpacked with ``unsquashfs`` into ``cache/layer-<digest>/``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.progress import Progress
from layerboot.run import require_tool, run

FLAVOURS = {"generic": "linux-image-amd64", "cloud": "linux-image-cloud-amd64"}
META_PACKAGE = FLAVOURS["cloud"]
DEFAULT_CACHE = Path(os.environ.get("LAYERBOOT_KERNEL_CACHE", "/var/cache/layerboot/kernel"))
_DEP = re.compile(r"^(linux-image-(\d[\w.+-]*-amd64))(?:\s*\(.*\))?$")
_VERSION = re.compile(r"^\d[\w.+-]*$")


def flavour_of(version: str) -> str:
    """``cloud`` for ``6.1.0-57-cloud-amd64``, ``generic`` for ``6.1.0-57-amd64``, else ``other``."""
    if re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", version):   # not layer-<digest>-...: kernels from layers
        return "cloud"
    if re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", version):
        return "generic"
    return "other"


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel: its version string, the bzImage and the module tree (depmod'ed)."""

    version: str
    root: Path

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def flavour(self) -> str:
        return flavour_of(self.version)

    def config_value(self, option: str) -> str | None:
        """The value of ``CONFIG_<option>`` in the kernel's config (None when unset)."""
        prefix = f"CONFIG_{option}="
        for line in self.config.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
        return None


def _download(package: str, into: Path) -> Path:
    with Progress(f"downloading {package}") as step:
        run(["apt-get", "download", package], cwd=into, timeout=1800, lines=step.line)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise LayerbootError(f"apt-get download {package} produced no .deb",
                             hint="check the apt sources (apt-get update)")
    return debs[-1]


def _real_package(meta_deb: Path, flavour: str = "cloud") -> tuple[str, str]:
    depends = run(["dpkg-deb", "-f", meta_deb, "Depends"]).text.strip()
    for item in depends.split(","):
        match = _DEP.match(item.strip().split("|")[0].strip())
        if match and flavour_of(match.group(2)) == flavour:
            return match.group(1), match.group(2)
    raise LayerbootError(f"{FLAVOURS[flavour]} depends on {depends!r}, which names no {flavour} kernel image")


def cached_kernel(cache: Path = DEFAULT_CACHE, flavour: str = "cloud") -> Kernel | None:
    """The newest already-unpacked kernel of ``flavour`` in ``cache`` (None when there is none)."""
    if not cache.is_dir():
        return None
    found = [Kernel(d.name, d) for d in cache.iterdir()
             if (d / ".complete").exists() and flavour_of(d.name) == flavour]
    return max(found, key=lambda k: _version_key(k.version)) if found else None


def _version_key(version: str) -> list[tuple[int, object]]:
    """Order versions by their numbers (6.1.0-10 after 6.1.0-9), not as strings."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def fetch_kernel(cache: Path = DEFAULT_CACHE, *, refresh: bool = False, flavour: str = "cloud") -> Kernel:
    """Return the unpacked Debian kernel of ``flavour`` (cloud or generic), downloading it the first time."""
    if flavour not in FLAVOURS:
        raise LayerbootError(f"unknown kernel flavour {flavour!r}", hint="use one of " + ", ".join(FLAVOURS))
    if not refresh:
        kernel = cached_kernel(cache, flavour)
        if kernel is not None:
            return kernel
    require_tool("apt-get", package="apt")
    require_tool("depmod", package="kmod")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)   # apt's _apt user drops privileges for downloads
        package, version = _real_package(_download(FLAVOURS[flavour], work), flavour)
        target = cache / version
        if (target / ".complete").exists():
            return Kernel(version, target)
        deb = _download(package, work)
        unpacked = work / "root"
        with Progress(f"unpacking {deb.name}") as step:
            run(["dpkg", "-x", deb, unpacked], timeout=600)
            kernel = Kernel(version, unpacked)
            if not kernel.image.is_file() or not kernel.moddir.is_dir():
                raise LayerbootError(f"{deb.name} has no {kernel.image.name} or module tree")
            step.note("depmod")
            run(["depmod", "-b", unpacked, version], timeout=600)
        (unpacked / ".complete").write_text(package + "\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return Kernel(version, target)


def cached_version(cache: Path, version: str) -> Kernel:
    """An already-unpacked kernel by its version string (``--kernel-version``)."""
    if not _VERSION.match(version):
        raise LayerbootError(f"{version!r} is not a kernel version like 6.1.0-57-amd64")
    kernel = Kernel(version, cache / version)
    if not (kernel.root / ".complete").exists() or not kernel.image.is_file():
        raise LayerbootError(f"no unpacked kernel {version} in {cache}",
                             hint="use --kernel generic|cloud to fetch one, or --kernel-from LAYER")
    return kernel


def _layer_versions(listing: str) -> list[str]:
    """Kernel versions that have both /boot/vmlinuz-V and a module tree, from an ``unsquashfs -l`` listing."""
    images, trees = set(), set()
    for line in listing.splitlines():
        path = line.strip().removeprefix("squashfs-root")
        if match := re.fullmatch(r"/boot/vmlinuz-(\d[\w.+-]*)", path):
            images.add(match.group(1))
        elif match := re.fullmatch(r"(?:/usr)?/lib/modules/(\d[\w.+-]*)/modules\.order", path):
            trees.add(match.group(1))
    return sorted(images & trees, key=_version_key)


def kernel_from_layer(image: Path, digest: str, cache: Path = DEFAULT_CACHE, *, version: str | None = None) -> Kernel:
    """The kernel a base image carries (/boot/vmlinuz-V + /lib/modules/V), unpacked into the cache and depmod'ed.

    The newest version that has both is taken unless ``version`` names one. Works for merged-/usr images
    (modules under /usr/lib/modules) and classic ones.
    """
    require_tool("unsquashfs", package="squashfs-tools")
    listing = run(["unsquashfs", "-l", image, "boot", "lib/modules", "usr/lib/modules"], timeout=600).text
    versions = _layer_versions(listing)
    if not versions:
        raise LayerbootError(f"layer {digest[:12]} has no kernel: it needs /boot/vmlinuz-VERSION and "
                             "/lib/modules/VERSION", hint="install a kernel package in the image "
                             "(e.g. 'layerboot base debootstrap --include linux-image-amd64')")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise LayerbootError(f"layer {digest[:12]} has no kernel {version} (it has {', '.join(versions)})")
    target = cache / f"layer-{digest[:16]}-{version}"
    if (target / ".complete").exists():
        return Kernel(version, target)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".layer-") as tmp:
        unpacked = Path(tmp) / "root"
        modules = "usr/lib/modules" if f"squashfs-root/usr/lib/modules/{version}" in listing else "lib/modules"
        run(["unsquashfs", "-no-xattrs", "-d", unpacked, image, f"boot/vmlinuz-{version}",
             f"boot/config-{version}", f"{modules}/{version}"], timeout=1800, check=False)
        if modules != "lib/modules":   # Kernel.moddir is lib/modules/V, as dpkg -x leaves a Debian package
            (unpacked / "lib" / "modules").mkdir(parents=True)
            (unpacked / modules / version).rename(unpacked / "lib" / "modules" / version)
        kernel = Kernel(version, unpacked)
        if not kernel.image.is_file() or not kernel.moddir.is_dir():
            raise LayerbootError(f"could not unpack kernel {version} from layer {digest[:12]}")
        require_tool("depmod", package="kmod")
        run(["depmod", "-b", unpacked, version], timeout=600)
        (unpacked / ".complete").write_text(f"layer {digest}\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return Kernel(version, target)
