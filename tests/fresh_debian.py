"""A genuinely fresh Debian 12 root for install tests: debootstrap's default variant (required + important
packages: systemd, apt, no python3), as a freshly installed server has it, with Debian's own python3 once
anything installs it.

CI pays for debootstrap once: its downloads are kept as a --make-tarball under /var/cache/layerboot/fresh-debian,
and so is the root it installs (as a tar.zst: unpacking it takes seconds, installing it minutes). apt's
downloaded .debs and pip's wheels are cached there too (bind-mounted into the root), so a rerun downloads
nothing it downloaded before. Commands run in the root with systemd-nspawn (own mount and PID namespaces, the
host's network); :class:`Booted` boots the root's systemd for tests of the installed units.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from layerboot.build.debootstrap import host_mirror
from layerboot.run import Process, Result, passed_environment, run

CACHE = Path(os.environ.get("LAYERBOOT_FRESH_DEBIAN_CACHE", "/var/cache/layerboot/fresh-debian"))
SUITE = "bookworm"
REPO = Path(__file__).resolve().parents[1]
# what a checkout holds that is not source: the copy a user would have after 'git clone'
NOT_SOURCE = (".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", "build/lib", "build/bdist*")


def _key(mirror: str) -> str:
    return hashlib.sha256(f"{SUITE}\n{mirror}\ndefault\namd64".encode()).hexdigest()[:16]


def root_tarball() -> Path:
    """The cached fresh root (building it, and debootstrap's download tarball, the first time)."""
    mirror = host_mirror()
    key = _key(mirror)
    root_tar = CACHE / f"root-{SUITE}-{key}.tar.zst"
    if root_tar.is_file():
        return root_tar
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = CACHE / f"debs-{SUITE}-{key}.tgz"
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as tmp:
        if not debs.is_file():
            run(["debootstrap", "--arch=amd64", f"--make-tarball={Path(tmp) / 'debs.tgz'}", SUITE,
                 Path(tmp) / "dl", mirror], timeout=3600)
            os.replace(Path(tmp) / "debs.tgz", debs)
        root = Path(tmp) / "root"
        run(["debootstrap", "--arch=amd64", f"--unpack-tarball={debs}", SUITE, root, mirror], timeout=3600,
            env={"LC_ALL": "C.UTF-8"})
        for item in (root / "var/cache/apt/archives").glob("*.deb"):
            item.unlink()
        partial = Path(tmp) / "root.tar.zst"
        run(["tar", "--zstd", "--numeric-owner", "--xattrs", "--acls", "-C", root, "-cf", partial, "."],
            timeout=1800)
        os.replace(partial, root_tar)
    return root_tar


@dataclass
class FreshRoot:
    """An unpacked fresh root; :meth:`run` runs a command in it (as root, or as another user)."""

    path: Path
    binds: list[tuple[Path, str]] = field(default_factory=list)

    def nspawn_argv(self, *extra: str) -> list[str]:
        argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--directory", str(self.path),
                "--resolv-conf=copy-host", "--timezone=off", "--setenv=LC_ALL=C.UTF-8",
                "--setenv=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        argv += [f"--bind={host}:{inside}" for host, inside in self.binds]
        argv += [f"--setenv={k}={v}" for k, v in passed_environment().items() if "proxy" in k.lower()]
        return argv + list(extra)

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 1800,
            user: str | None = None) -> Result:
        extra = [f"--user={user}"] if user else []
        result = run([*self.nspawn_argv("--console=pipe", *extra, "--"), *argv], check=check, timeout=timeout)
        # nspawn's own complaint, on a host whose PID 1 is not systemd, about cleaning up its propagation dir
        stderr = b"".join(line for line in result.stderr.splitlines(keepends=True)
                          if not line.startswith(b"Attempted to remove disk file system under"))
        return Result(result.argv, result.returncode, result.stdout, stderr)

    def write(self, rel: str, text: str, mode: int = 0o644) -> Path:
        target = self.path / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target


@contextlib.contextmanager
def fresh_root() -> Iterator[FreshRoot]:
    """A fresh Debian 12 root under /var/tmp with apt set up like the host's (same mirror), caches bound in,
    and a copy of this checkout in /root/layerboot (where a user would clone it). Removed afterwards."""
    tarball = root_tarball()
    work = Path(tempfile.mkdtemp(prefix="lbt-fresh-debian-", dir="/var/tmp"))
    try:
        root = work / "root"
        root.mkdir()
        run(["tar", "--zstd", "--numeric-owner", "--xattrs", "--acls", "-C", root, "-xf", tarball], timeout=600)
        for conf in Path("/etc/apt/apt.conf.d").glob("99*"):          # how this host reaches its mirror
            shutil.copy(conf, root / "etc/apt/apt.conf.d" / conf.name)
        for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
            if source.is_file():
                target = root / source.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
        for number, pem in enumerate(host_extra_cas()):                  # a site CA in front of PyPI
            target = root / f"usr/local/share/ca-certificates/host-{number}.crt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(pem)
        checkout = root / "root/layerboot"
        shutil.copytree(REPO, checkout, symlinks=True, ignore=_not_source)
        binds = []
        for name, inside in (("apt-archives", "/var/cache/apt/archives"), ("pip", "/root/.cache/pip")):
            (CACHE / name / "partial").mkdir(parents=True, exist_ok=True)
            (root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
            binds.append((CACHE / name, inside))
        yield FreshRoot(root, binds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def host_extra_cas(bundle: Path = Path("/etc/ssl/certs/ca-certificates.crt"),
                   mozilla: Path = Path("/usr/share/ca-certificates")) -> list[str]:
    """Certificates this host trusts beyond Debian's set (e.g. a site proxy's CA), as PEM blocks."""
    def blocks(text: str) -> list[str]:
        return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)

    if not bundle.is_file():
        return []
    known = {"".join(b.split()) for path in mozilla.rglob("*.crt") for b in blocks(path.read_text(errors="replace"))}
    return [b + "\n" for b in blocks(bundle.read_text(errors="replace")) if "".join(b.split()) not in known]


def _not_source(directory: str, names: list[str]) -> list[str]:
    import fnmatch
    rel = os.path.relpath(directory, REPO)
    return [n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(os.path.join(rel, n), p)
                                    for p in NOT_SOURCE)]


class Booted:
    """The root booted with its own systemd (systemd-nspawn --boot); :meth:`run` runs a command in it."""

    def __init__(self, root: FreshRoot, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: Process | None = None
        self.leader = 0

    def __enter__(self) -> "Booted":
        handle = open(self.log, "wb")
        self.proc = Process(self.root.nspawn_argv("--boot"), stdout=handle, stderr=handle)
        handle.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                self.leader = int(pids[0])
                state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=90)
                if state.text.strip() in ("running", "degraded"):
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the container stopped: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"the container did not boot: {self.log.read_text()[-3000:]}")

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 300) -> Result:
        return run(["nsenter", "--target", str(self.leader), "--all", "--", *argv], check=check, timeout=timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.leader:
            self.run(["systemctl", "poweroff"], check=False, timeout=30)
        try:
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
        self.proc.terminate()
