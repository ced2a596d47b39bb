"""layerboot's own modules as files, for images that carry the node-side client (client layer, debootstrap base).

Found through the imported packages' ``__path__``, so it works the same from an editable checkout (where the
rooms are top-level folders mapped by pyproject.toml) and from an installed wheel.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path

# Every package of the distribution (pyproject.toml [tool.setuptools] packages; a test keeps them equal).
PACKAGES = ("layerboot", "layerboot.overlays", "layerboot.server", "layerboot.server.auth", "layerboot.server.db",
            "layerboot.server.api", "layerboot.server.console", "layerboot.server.db.migrations",
            "layerboot.server.fleet", "layerboot.server.guard", "layerboot.server.mirror", "layerboot.server.monitor",
            "layerboot.server.monitor.power", "layerboot.server.replica", "layerboot.server.services",
            "layerboot.tools", "layerboot.build", "layerboot.build.oci", "layerboot.initrd", "layerboot.initrd.stage1")


def package_files() -> list[tuple[str, Path]]:
    """(path below site-packages, source file) for every .py module of layerboot, sorted."""
    files: list[tuple[str, Path]] = []
    for name in PACKAGES:
        source = Path(next(iter(importlib.import_module(name).__path__)))
        prefix = "/".join(name.split("."))
        files += [(f"{prefix}/{path.name}", path) for path in sorted(source.glob("*.py"))]
    return files


def copy_package(site_packages: Path) -> Path:
    """Lay layerboot out under ``site_packages`` as an install would (replacing an older copy)."""
    target = site_packages / "layerboot"
    if target.exists():
        shutil.rmtree(target)
    for relative, source in package_files():
        dest = site_packages / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    return target


def package_digest() -> str:
    """A hash of every module's name and bytes: a cache key for images that carry the package."""
    digest = hashlib.sha256()
    for relative, source in package_files():
        digest.update(relative.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()
