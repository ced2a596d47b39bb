"""Debian's cloud kernel for boot tests: ``apt-get download`` + ``dpkg -x`` into a cache dir, then depmod.

``linux-image-cloud-amd64`` is a metapackage; its single dependency names the real image package
(``linux-image-<version>-cloud-amd64``). The unpacked tree is kept under ``cache/<version>/`` and reused.
Nothing is installed on the host; the download goes through the host's normal apt sources.
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

META_PACKAGE = "linux-image-cloud-amd64"
DEFAULT_CACHE = Path(os.environ.get("LAYERBOOT_KERNEL_CACHE", "/var/cache/layerboot/kernel"))
_DEP = re.compile(r"^(linux-image-(\d[\w.+-]*-cloud-amd64))(?:\s*\(.*\))?$")


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

    def config_value(self, option: str) -> str | None:
        """The value of ``CONFIG_<option>`` in the kernel's config (None when unset)."""
        prefix = f"CONFIG_{option}="
        for line in self.config.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
        return None


def _download(package: str, into: Path) -> Path:
    with Progress(f"downloading {package}") as step:
        run(["apt-get", "download", package], cwd=into, timeout=600, lines=step.line)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise LayerbootError(f"apt-get download {package} produced no .deb",
                             hint="check the apt sources (apt-get update)")
    return debs[-1]


def _real_package(meta_deb: Path) -> tuple[str, str]:
    depends = run(["dpkg-deb", "-f", meta_deb, "Depends"]).text.strip()
    for item in depends.split(","):
        match = _DEP.match(item.strip().split("|")[0].strip())
        if match:
            return match.group(1), match.group(2)
    raise LayerbootError(f"{META_PACKAGE} depends on {depends!r}, which names no cloud kernel image")


def cached_kernel(cache: Path = DEFAULT_CACHE) -> Kernel | None:
    """The newest already-unpacked kernel in ``cache`` (None when there is none)."""
    if not cache.is_dir():
        return None
    found = [Kernel(d.name, d) for d in cache.iterdir() if (d / ".complete").exists()]
    return max(found, key=lambda k: _version_key(k.version)) if found else None


def _version_key(version: str) -> list[tuple[int, object]]:
    """Order versions by their numbers (6.1.0-10 after 6.1.0-9), not as strings."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def fetch_kernel(cache: Path = DEFAULT_CACHE, *, refresh: bool = False) -> Kernel:
    """Return the unpacked Debian cloud kernel, downloading it the first time."""
    if not refresh:
        kernel = cached_kernel(cache)
        if kernel is not None:
            return kernel
    require_tool("apt-get", package="apt")
    require_tool("depmod", package="kmod")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)   # apt's _apt user drops privileges for downloads
        package, version = _real_package(_download(META_PACKAGE, work))
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
