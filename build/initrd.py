"""Build layerboot's initramfs with dracut: Python stage1 as /init, the stdlib subset it imports as .pyc.

The stdlib subset is found by running the target interpreter (Debian's python3.11) once: it imports every stage1
module (they do nothing at import time) and reports ``sys.modules``; each module it loaded is compiled to a
sourceless, unchecked-hash ``.pyc`` (dracut resets mtimes, so timestamp pycs would be useless). dracut then runs
with a private ``dracutbasedir`` whose ``modules.d`` holds only our ``90layerboot`` module, so nothing from the host's
dracut configuration or hostonly detection leaks in. Built images are cached by a hash of all inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.drivers import DriverPlan, plan_drivers
from layerboot.build.kernel import Kernel
from layerboot.errors import LayerbootError
from layerboot.initrd.stage1.stream import NBD_OPTIONS
from layerboot.progress import Progress
from layerboot.run import require_tool, run

STAGE1_DIR = Path(__file__).resolve().parent.parent / "initrd" / "stage1"
DRACUT_MODULE = Path(__file__).resolve().parent.parent / "initrd" / "dracut" / "90layerboot"
DRACUT_BASE = Path("/usr/lib/dracut")
PYTHON = "/usr/bin/python3.11"
BUSYBOX = "/bin/busybox"
DEFAULT_CACHE = Path(os.environ.get("LAYERBOOT_INITRD_CACHE", "/var/cache/layerboot/initrd"))
# Imported lazily by stage1 on some paths only (so absent from a plain import): still ship them. _hashlib brings
# libcrypto (OpenSSL's SHA-256: stage1/hashing.py, chosen by the figures in bench/README.md).
EXTRA_MODULES = ("_json", "traceback", "encodings.latin_1", "encodings.ascii", "json", "_hashlib")
DEV_NODES = (("null", 1, 3), ("console", 5, 1), ("kmsg", 1, 11), ("random", 1, 8), ("urandom", 1, 9))
INIT_SCRIPT = """#!{python} -SIB
# layerboot stage1: PID 1 of the initramfs (see docs/stage1.md)
import sys
sys.path.insert(0, "/usr/lib/layerboot")
from stage1.main import main
main()
"""

_COLLECT = r"""
import os, sys
src, out, extra = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.path.insert(0, src)
for name in sorted(os.listdir(os.path.join(src, "stage1"))):
    if name.endswith(".py") and name != "__init__.py":
        __import__("stage1." + name[:-3])
boot = sorted(sys.modules)
for name in extra:
    __import__(name)
loaded = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
import json, py_compile
stdlib = os.path.dirname(os.__file__)
files, libraries = [], []
for name, path in sorted(loaded.items()):
    if not path:
        continue
    if path.endswith(".so"):
        libraries.append(path)
        continue
    if path.startswith(src + os.sep):
        target = os.path.join(out, "usr/lib/layerboot", os.path.relpath(path, src))
    elif path.startswith(stdlib + os.sep):
        target = os.path.join(out, stdlib.lstrip("/"), os.path.relpath(path, stdlib))
    else:
        raise SystemExit(f"stage1 imported {name} from {path}, outside the stdlib")
    py_compile.compile(path, cfile=target[:-3] + ".pyc", dfile=path, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    files.append(name)
os.makedirs(os.path.join(out, stdlib.lstrip("/"), "lib-dynload"), exist_ok=True)
print(json.dumps({"modules": sorted(loaded), "boot_modules": boot, "compiled": files, "libraries": libraries}))
"""


@dataclass(frozen=True)
class Initrd:
    path: Path
    size: int
    modules: tuple[str, ...]   # every Python module stage1's interpreter has loaded after importing stage1
    seconds: float
    cached: bool
    drivers: DriverPlan | None = None


def stage1_sources() -> list[Path]:
    return sorted(p for p in STAGE1_DIR.glob("*.py"))


def collect_payload(payload: Path, public_key: Path, *, python: str = PYTHON) -> dict[str, list[str]]:
    """Write /init, stage1 and its stdlib subset (.pyc) and the public key under ``payload``."""
    with tempfile.TemporaryDirectory(prefix="layerboot-stage1-src-") as tmp:
        src = Path(tmp)
        shutil.copytree(STAGE1_DIR, src / "stage1", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        result = run([python, "-S", "-I", "-B", "-c", _COLLECT, src, payload, ",".join(EXTRA_MODULES)],
                     timeout=300)
    info = json.loads(result.text)
    (payload / "init").write_text(INIT_SCRIPT.format(python=python))
    (payload / "init").chmod(0o755)
    key_dir = payload / "etc" / "layerboot"
    key_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public_key, key_dir / "signing.pub")
    write_modprobe_options(payload)
    return info


def write_modprobe_options(payload: Path) -> None:
    """/etc/modprobe.d/layerboot.conf: the options of modules stage1 loads in one ``modprobe -a`` (which takes
    none on its command line): nbd for streamed layers (initrd/stage1/stream.py)."""
    conf = payload / "etc" / "modprobe.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "layerboot.conf").write_text(f"options nbd {' '.join(NBD_OPTIONS)}\n")


def add_device_nodes(payload: Path) -> None:
    """/dev nodes stage1 needs before it mounts devtmpfs (spawn's /dev/null, printk, entropy). Needs root."""
    dev = payload / "dev"
    dev.mkdir(exist_ok=True)
    for name, major, minor in DEV_NODES:
        os.mknod(dev / name, 0o020000 | (0o600 if name in ("console", "kmsg") else 0o666), os.makedev(major, minor))


def _private_dracut(into: Path) -> Path:
    """A dracutbasedir with the host's dracut scripts and only the layerboot module in modules.d."""
    base = into / "dracut"
    base.mkdir()
    for entry in DRACUT_BASE.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    (base / "modules.d").mkdir()
    shutil.copytree(DRACUT_MODULE, base / "modules.d" / "90layerboot")
    return base


def input_key(kernel: Kernel, public_key: Path, python: str = PYTHON, busybox: str = BUSYBOX,
              drivers: DriverPlan | None = None) -> str:
    digest = hashlib.sha256()
    for path in [*stage1_sources(), *sorted(DRACUT_MODULE.iterdir()), Path(__file__), Path(public_key),
                 Path(python), Path(busybox)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(kernel.version.encode() + str(kernel.root).encode())
    if drivers is not None:
        digest.update(drivers.key().encode())
    return digest.hexdigest()[:24]


def build_initrd(kernel: Kernel, public_key: Path, output: Path, *, python: str = PYTHON,
                 busybox: str = BUSYBOX, cache: Path | None = None, drivers: DriverPlan | None = None) -> Initrd:
    """Build (or take from ``cache``) the initramfs for ``kernel`` trusting ``public_key``; write it to ``output``.

    ``drivers`` says which kernel modules and firmware go in (build/drivers.py); default: the small virtio set.
    """
    require_tool("dracut", package="dracut-core")
    if os.geteuid() != 0:
        raise LayerbootError("building the initramfs needs root (dracut, device nodes in the image)",
                             hint="run it as root")
    for tool, package in ((python, "python3-minimal"), (busybox, "busybox-static")):
        if not Path(tool).is_file():
            raise LayerbootError(f"{tool} is missing", hint=f"apt-get install {package}")
    if not Path(public_key).is_file():
        raise LayerbootError(f"no public key at {public_key}", hint="create one with 'layerboot key generate'")
    started = time.monotonic()
    if drivers is None:
        drivers = plan_drivers(kernel, "virtio")
    key = input_key(kernel, public_key, python, busybox, drivers)
    if cache is not None:
        image, meta = cache / f"{key}.img", cache / f"{key}.json"
        if image.is_file() and meta.is_file():
            output.parent.mkdir(parents=True, exist_ok=True)
            if output.resolve() != image.resolve():
                shutil.copyfile(image, output)
            modules = tuple(json.loads(meta.read_text())["modules"])
            return Initrd(output, output.stat().st_size, modules, time.monotonic() - started, True, drivers)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="layerboot-initrd-") as tmp:
        work = Path(tmp)
        payload = work / "payload"
        payload.mkdir()
        info = collect_payload(payload, public_key, python=python)
        add_device_nodes(payload)
        (work / "conf.d").mkdir()
        # dracut copies the firmware the modules name (modinfo) from these directories, as drivers.py found it
        (work / "dracut.conf").write_text(f'fw_dir="{" ".join(map(str, drivers.firmware_dirs))}"\n')
        partial = work / "initrd.img"
        with Progress(f"building the initramfs for {kernel.version} with dracut") as step:
            run(["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--no-early-microcode",
                 "--reproducible", "--modules", "layerboot", "--kver", kernel.version, "--kmoddir", kernel.moddir,
                 "--conf", work / "dracut.conf", "--confdir", work / "conf.d", "--tmpdir", work, "--zstd",
                 partial],
                env={"dracutbasedir": str(_private_dracut(work)), "LAYERBOOT_PAYLOAD": str(payload),
                     "LAYERBOOT_PYTHON": python, "LAYERBOOT_BUSYBOX": busybox,
                     "LAYERBOOT_LIBRARIES": " ".join(info["libraries"]),
                     "LAYERBOOT_DRIVERS": " ".join(drivers.modules)},
                timeout=900, lines=step.line)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(partial, cache / f"{key}.img.tmp")
            (cache / f"{key}.json").write_text(json.dumps({"modules": info["modules"]}))
            os.replace(cache / f"{key}.img.tmp", cache / f"{key}.img")
        tmp_out = output.with_name(output.name + ".tmp")
        shutil.copyfile(partial, tmp_out)
        os.replace(tmp_out, output)
    return Initrd(output, output.stat().st_size, tuple(info["modules"]), time.monotonic() - started, False,
                  drivers)
