"""Crash leftovers: real processes killed with SIGKILL in the middle of a commit, an import or a bake; then
``store fsck`` reports what they left, and layerbootd's start (or ``fsck --repair``) removes it.

Nothing that is in use is ever touched: a temp file or scratch directory is only a leftover when no live
process holds its flock, and removal never crosses a mount point.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from conftest import write_tree
from layerboot.overlays.profile import Profiles
from layerboot.run import Process, run
from layerboot.tools.cli import main
from server_daemon import Daemon, boot_profile, write_config

HERE = Path(__file__).resolve().parent


def crash(store: Path, pattern: str, *args: str) -> None:
    """Run ``layerboot --store STORE ARGS`` and SIGKILL it just before it publishes a file matching PATTERN."""
    result = run([sys.executable, str(HERE / "crashpoint.py"), pattern, "--store", str(store), *args],
                 check=False, env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr.decode())


def fsck(capsys: pytest.CaptureFixture[str], store: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["--store", str(store), "store", "fsck", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def crash_everywhere(profiles: Profiles, make_layer, tmp_path: Path) -> dict[str, str]:
    """Kill a CLI at each publishing step of a profile change and an import; returns what each left."""
    boot_profile(profiles, make_layer, tmp_path)
    root = profiles.paths.root
    overlay = make_layer({"etc/extra": "x\n"}, base=profiles.current("p1").base)
    tree = write_tree(tmp_path / "newtree", {"etc/new": "new\n"})
    crash(root, r"/manifests/p1/\d+\.json$", "profile", "add", "p1", overlay)     # manifest written, not renamed
    crash(root, r"/profiles/p1/\d+\.json$", "profile", "add", "p1", overlay)      # manifest published, no generation
    crash(root, r"/state/manifest-serial$", "profile", "add", "p1", overlay)      # serial written, not renamed
    crash(root, r"/objects/[0-9a-f]{64}$", "layer", "import", str(tree), "--kind", "overlay", "--base",
          profiles.current("p1").base)                                            # image packed, not published
    crash(root, r"/meta/[0-9a-f]{64}\.json$", "layer", "import", str(tree), "--kind", "overlay", "--base",
          profiles.current("p1").base)                                            # object published, no record
    stray = profiles.paths.incoming / ".queue" / "20200101000000-0badc0de.tar.zst"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"an upload file no record needs")
    gone = profiles.paths.incoming / "02-00-00-00-00-99"   # the SFTP area of a node that was removed
    gone.mkdir()
    (gone / "old.tar.zst").write_bytes(b"x")
    return {"overlay": overlay}


EXPECTED = ("LEFTOVER temp file manifests/p1/.", "LEFTOVER temp file profiles/p1/.",
            "LEFTOVER temp file state/.manifest-serial.", "LEFTOVER scratch tmp/import.",
            "LEFTOVER temp file meta/.", "LEFTOVER orphan manifest manifests/p1/3.json",
            "LEFTOVER unrecorded object objects/")


def test_fsck_reports_what_killed_commits_left_and_layerbootd_start_removes_it(
        profiles: Profiles, make_layer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = crash_everywhere(profiles, make_layer, tmp_path)
    root = profiles.paths.root
    generation = profiles.current("p1").number
    code, out, err = fsck(capsys, root)
    assert code == 1, out + err
    for line in EXPECTED:
        assert line in out, (line, out)
    assert "LEFTOVER queue file incoming/.queue/20200101000000-0badc0de.tar.zst" in out
    assert "LEFTOVER sftp upload incoming/02-00-00-00-00-99/old.tar.zst (1 B): node 02:00:00:00:00:99 is not " \
           "registered" in out
    assert "BAD" not in out
    assert "fsck found 10 leftover(s)" in err and "fsck --repair" in err

    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                    tmp_path / "layerbootd.log").start()
    daemon.stop()
    log = daemon.log.read_text()
    assert log.count("removed ") >= 10 and "start-up clean-up: removed 10 leftover(s)" in log, log
    assert fsck(capsys, root)[0] == 0
    # the profile works on: the number the crashed commit had reserved is reused, with a new manifest
    assert profiles.add("p1", made["overlay"]).number == generation + 1
    assert fsck(capsys, root)[0] == 0


def test_fsck_repair_removes_leftovers_but_nothing_in_use_or_mounted(
        profiles: Profiles, make_layer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crash_everywhere(profiles, make_layer, tmp_path)
    root = profiles.paths.root
    # a bake running beside us (its scratch is flock-held) and a dead squash that left a mount behind
    with Process([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                  "from layerboot.atomic import scratch_dir\n"
                  "with scratch_dir(Path(sys.argv[1]), prefix='bake.') as d:\n"
                  "    print(d, flush=True); time.sleep(120)\n", str(profiles.paths.tmp)],
                 env={"PYTHONPATH": os.pathsep.join(sys.path)}) as busy:
        assert busy.stdout is not None
        in_use = Path(busy.stdout.readline().decode().strip())
        mounted = profiles.paths.tmp / "squash.dead0000" / "layers" / "0"
        mounted.mkdir(parents=True)
        run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mounted)])
        try:
            (mounted / "precious").write_text("on another filesystem")
            code, out, err = fsck(capsys, root, "--repair")
            assert code == 1 and "1 leftover(s)" in err, out + err
            assert out.count("REMOVED ") == 10, out
            assert f"LEFTOVER scratch tmp/squash.dead0000" in out and f"umount {mounted}" in out
            assert in_use.is_dir() and in_use.name not in out
            assert (mounted / "precious").read_text() == "on another filesystem"
        finally:
            run(["umount", str(mounted)])
    code, out, err = fsck(capsys, root, "--repair")
    assert code == 0 and "REMOVED scratch tmp/squash.dead0000" in out, out + err
    assert not any(profiles.paths.tmp.iterdir())
    assert fsck(capsys, root) == (0, fsck(capsys, root)[1], "")
