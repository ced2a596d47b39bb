"""Shared fixtures: a fresh store with a signing key in tmp_path, layer trees, the root/tool gates, and the
database on both backends (SQLite in the store; a real PostgreSQL started once per session)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerboot.overlays.keys import generate_key
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from pgserver import PostgresServer, server_bindir

WHITEOUT_MODE = 0o020000 | 0o600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked root run only as root; everywhere else they are skipped with the reason."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (loop devices, mounts, namespaces)")
    for item in items:
        if "root" in item.keywords or "qemu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_layerboot_logging() -> Iterator[None]:
    """A test that runs the CLI in-process (main([...])) configures the 'layerboot' logger for a terminal
    (its own handler, propagate off); put it back so later tests' caplog sees layerboot's records."""
    yield
    logger = logging.getLogger("layerboot")
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "store")


@pytest.fixture
def store(paths: Paths) -> Store:
    store = Store(paths)
    store.init()
    generate_key(paths.signing_key, paths.public_key)
    return store


@pytest.fixture
def profiles(store: Store) -> Profiles:
    return Profiles(store)


def write_tree(root: Path, files: dict[str, str], whiteouts: tuple[str, ...] = ()) -> Path:
    """Create a directory tree: text files by relative path, plus overlayfs whiteouts (char 0/0)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel in whiteouts:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mknod(root / rel, WHITEOUT_MODE, os.makedev(0, 0))
    return root


@pytest.fixture
def make_layer(store: Store, tmp_path: Path) -> Callable[..., str]:
    """Build a squashfs layer from a dict of files and import it; returns its digest."""
    counter = iter(range(10_000))

    def make(files: dict[str, str], *, kind: str = "overlay", base: str | None = None,
             whiteouts: tuple[str, ...] = (), description: str = "") -> str:
        tree = write_tree(tmp_path / f"tree{next(counter)}", files, whiteouts)
        layer = store.import_tree(tree, kind=kind, base=base, description=description, all_root=True)
        shutil.rmtree(tree)
        return layer.digest

    return make


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (Debian's postgresql package), torn down at the end."""
    bindir = server_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("the PostgreSQL server is not installed: .ci/install installs Debian's postgresql")
        pytest.skip("needs Debian's postgresql package (see .ci/install)")
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """server.database for a test, on each backend: the store's SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{Paths(tmp_path / 'store').database}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Commands the tests start from another directory import the installed layerboot: it must be this
    checkout's code (an editable install, or .ci/install run from this checkout), or they test something else."""
    import sys

    from layerboot.build.package_files import package_digest
    from layerboot.run import run

    code = "from layerboot.build.package_files import package_digest; print(package_digest())"
    result = run([sys.executable, "-c", code], cwd="/", check=False)
    if result.returncode != 0 or result.text.strip() != package_digest():
        pytest.exit(f"{sys.executable} does not import this checkout's layerboot from other directories "
                    f"({result.stderr.decode().strip().splitlines()[-1:] or 'an older copy'}): run "
                    "'bash .ci/install' again, or install the checkout editable (pip install -e .)", returncode=4)
