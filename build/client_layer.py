"""An overlay layer that gives a small (busybox) node layerboot's client side: ``layerboot capture`` and ``upload``.

Contents: Debian's python3.11 with the shared libraries it and its extension modules need, the stdlib (minus
tests, GUI and packaging tools) precompiled to unchecked-hash .pyc, layerboot itself laid out as an installed
package, and the third-party packages layerboot's CLI imports (found by importing it once with the target
interpreter), all under /usr/lib/python3/dist-packages, plus /usr/bin/{python3,layerboot}. capture.py packs with
the ``zstandard`` module, so no zstd binary is needed. The heartbeat agent comes with it: ``layerboot heartbeat
--loop`` for busybox bases, and its systemd timer (enabled; inert without systemd) for systemd bases.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from layerboot.build.package_files import copy_package, package_digest
from layerboot.errors import LayerbootError
from layerboot.run import run
from layerboot.server.monitor.agent import install_units

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "__pycache__",
               "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages", "unittest", "distutils"}
DIST = "usr/lib/python3/dist-packages"
ENTRY_MODULES = ("layerboot.tools.cli", "layerboot.overlays.capture", "layerboot.server.client",
                 "layerboot.server.monitor.agent")
LAUNCHER = "#!/usr/bin/python3.11\nimport sys\nfrom layerboot.tools.cli import main\nsys.exit(main())\n"

_FIND = r"""
import json, sys
sys.path[:0] = sys.argv[1:3]
for name in sys.argv[3].split(","):
    __import__(name)
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
print(json.dumps(files))
"""


def _site_packages() -> Path:
    """Where the build host's layerboot dependencies (zstandard, cryptography) are installed."""
    import zstandard

    return Path(zstandard.__file__).resolve().parent.parent


def _libraries(binaries: list[Path]) -> set[Path]:
    """Shared libraries (resolved, plus the loader) that ``binaries`` need, from ldd."""
    found: set[Path] = set()
    for binary in binaries:
        for line in run(["ldd", binary]).text.splitlines():
            parts = line.split()
            for word in parts:
                if word.startswith("/") and Path(word).exists():
                    found.add(Path(word))
    return found


def _put(tree: Path, source: Path, target: str | None = None) -> None:
    dest = tree / (target or str(source).lstrip("/"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, dest, follow_symlinks=True)


def input_key() -> str:
    from layerboot.server.monitor.agent import UNIT_DIR, UNITS

    digest = hashlib.sha256(PYTHON.read_bytes())
    digest.update(package_digest().encode())
    for name in UNITS:
        digest.update((UNIT_DIR / name).read_bytes())
    return digest.hexdigest()[:24]


def build_client_tree(tree: Path) -> Path:
    """Write the client layer's files under ``tree`` (an overlay upper dir on top of a busybox base)."""
    if not PYTHON.is_file():
        raise LayerbootError(f"{PYTHON} is missing", hint="apt-get install python3-minimal")
    site = _site_packages()
    dist = tree / DIST
    dist.mkdir(parents=True, exist_ok=True)
    copy_package(dist)
    files = json.loads(run([PYTHON, "-S", "-I", "-B", "-c", _FIND, dist, site, ",".join(ENTRY_MODULES)]).text)
    third_party = {Path(f).relative_to(site).parts[0] for f in files if f.startswith(str(site) + os.sep)}
    loaded = {Path(f) for f in files}

    def unused(directory: str, names: list[str]) -> list[str]:
        """Caches, tests, and extension modules nobody imported (zstandard's cffi backend alone is 12 MB)."""
        return [n for n in names if n in ("__pycache__", "tests")
                or (n.endswith(".so") and Path(directory, n) not in loaded)]

    for name in sorted(third_party):
        source = site / name
        if source.is_dir():
            shutil.copytree(source, dist / name, ignore=unused)
        else:
            shutil.copy2(source, dist / name)
    shutil.copytree(STDLIB, tree / str(STDLIB).lstrip("/"), symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in SKIP_STDLIB or n.endswith(".pyc")])
    _put(tree, PYTHON)
    (tree / "usr/bin/python3").symlink_to("python3.11")
    (tree / "usr/bin/layerboot").write_text(LAUNCHER)
    (tree / "usr/bin/layerboot").chmod(0o755)
    install_units(tree)
    # Shared libraries for the interpreter and the extension modules layerboot imports; other lib-dynload
    # modules are shipped but may lack their libraries (an ImportError if something ever wants them).
    extensions = [Path(f) for f in files if f.endswith(".so")]
    for library in _libraries([PYTHON, *extensions]):
        _put(tree, library)
    run([PYTHON, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         "-s", str(tree), "-p", "/", tree / str(STDLIB).lstrip("/"), dist], timeout=900)
    return tree


def client_layer_image(output: Path, *, cache: Path | None = None) -> Path:
    """A squashfs of the client tree at ``output`` (cached by a hash of its inputs)."""
    from layerboot.overlays.squashfs import mksquashfs

    key = input_key()
    cached = cache / f"client-{key}.squashfs" if cache is not None else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, output)
        return output
    with tempfile.TemporaryDirectory(prefix="layerboot-client-") as tmp:
        tree = build_client_tree(Path(tmp) / "tree")
        partial = Path(tmp) / "client.squashfs"
        mksquashfs(tree, partial, all_root=True)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(partial, str(cached) + ".tmp")
            os.replace(str(cached) + ".tmp", cached)
        shutil.copyfile(partial, output)
    return output


if __name__ == "__main__":  # pragma: no cover - manual use
    print(client_layer_image(Path(sys.argv[1])))
