"""Disk errors as one line: which filesystem, how full, what to do; the retry classification of bake failures."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from layerboot.diskspace import filesystem, note_database, require_space, storage_error
from layerboot.errors import CommandError, LayerbootError, StorageError
from layerboot.log import run_main
from layerboot.overlays.tarscan import UploadRejected
from layerboot.run import run
from layerboot.server.retry import backoff, classify


@pytest.fixture
def tmpfs(tmp_path: Path):  # noqa: ANN201
    mountpoint = tmp_path / "a dir with spaces"
    mountpoint.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)])
    yield mountpoint
    run(["umount", str(mountpoint)])


@pytest.mark.root
def test_filesystem_names_the_mount_even_with_spaces_and_measures_it(tmpfs: Path) -> None:
    (tmpfs / "sub").mkdir()
    fs = filesystem(tmpfs / "sub" / "not-yet-created")
    assert (fs.device, fs.mountpoint, fs.fstype) == ("tmpfs", str(tmpfs), "tmpfs")
    assert 8_000_000 <= fs.total <= 8_500_000 and fs.free <= fs.total
    with pytest.raises(StorageError) as err:
        require_space(tmpfs, 20 * 10**6, what="importing x")
    assert str(err.value) == f"no space left on tmpfs mounted at {tmpfs} for importing x (needed ~20 MB, free " \
                             f"{fs.usable / 1e6:.1f} MB)"
    assert err.value.errno == errno.ENOSPC and err.value.http_status == 507
    assert err.value.hint == f"free space on {tmpfs} (or grow it), then try again; nothing was half-written"


def test_os_and_sqlite_errors_about_the_disk_become_one_line(tmp_path: Path) -> None:
    eio = storage_error(OSError(errno.EIO, "Input/output error", str(tmp_path / "f")), doing="reading")
    assert eio is not None and eio.message.startswith("I/O error on ") and eio.message.endswith(
        f"(reading {tmp_path / 'f'})") and eio.http_status == 503 and "dmesg" in (eio.hint or "")
    erofs = storage_error(OSError(errno.EROFS, "Read-only file system"), tmp_path / "g")
    assert erofs is not None and erofs.message.startswith("read-only filesystem on ") and "read-write" in erofs.hint
    assert storage_error(OSError(errno.EACCES, "Permission denied", "/x")) is None
    assert storage_error(ValueError("no")) is None
    db = tmp_path / "state" / "x.sqlite"
    note_database(db)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode, full.sqlite_errorname = 13, "SQLITE_FULL"
    problem = storage_error(full)
    assert problem is not None and problem.errno == errno.ENOSPC and f"(the database {db};" in problem.message
    other = sqlite3.OperationalError("no such table")
    other.sqlite_errorcode = 1
    assert storage_error(other) is None


def test_the_cli_handler_prints_one_line_for_a_raw_disk_error(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise OSError(errno.ENOSPC, "No space left on device")   # a write() error: no file name attached

    assert run_main(body, debug=False, prog="layerboot") == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["layerboot: error: no space left on a filesystem this command writes to",
                     "layerboot: hint: see 'df -h' (and dmesg for I/O errors), fix it, then try again"]
    with pytest.raises(OSError, match="No space left"):   # --debug: the original error and its traceback
        run_main(body, debug=True, prog="layerboot")
    capsys.readouterr()

    def bug() -> int:
        raise KeyError("x")

    assert run_main(bug, debug=False, prog="layerboot") == 70   # a bug stays a bug


def test_only_a_refusal_of_the_content_fails_an_upload() -> None:
    assert not classify(UploadRejected("upload rejected: x: setuid")).retry
    for err in (CommandError(["tar2sqfs"], -9, ""), CommandError(["zstd"], None, "", timed_out=True),
                StorageError("no space left on /dev/x", errno=errno.ENOSPC), LayerbootError("no profile named 'p'"),
                OSError(errno.EIO, "Input/output error", "/q"), RuntimeError("a bug")):
        outcome = classify(err)
        assert outcome.retry and outcome.message, err
    assert classify(RuntimeError("a bug")).message == "internal error: RuntimeError: a bug"
    assert classify(OSError(errno.EIO, "Input/output error", "/q")).message.startswith("I/O error on ")
    assert [backoff(n, initial=15, maximum=600) for n in (1, 2, 3, 4, 5, 6, 7, 100)] == \
        [15, 30, 60, 120, 240, 480, 600, 600]
