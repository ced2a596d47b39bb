"""One layerbootd per store: a second daemon on the same store refuses to start, naming the first one's PID."""

from __future__ import annotations

import sys
from pathlib import Path

from layerboot.overlays.profile import Profiles
from layerboot.ports import free_port
from layerboot.run import run
from server_daemon import Daemon, boot_profile, write_config


def test_a_second_layerbootd_on_the_same_store_is_refused_and_touches_nothing(profiles: Profiles, make_layer,
                                                                           tmp_path: Path) -> None:
    boot_profile(profiles, make_layer, tmp_path)
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    first = Daemon(profiles.paths, config, tmp_path / "first.log").start()
    try:
        assert first.proc is not None
        leftover = profiles.paths.meta / ".x.json.abc123.tmp"   # what a crash would leave; the first has started
        leftover.write_text("{}")
        second = run([sys.executable, "-m", "layerboot.server.main", "--config", str(config), "--listen",
                      "127.0.0.1", "--port", str(free_port())], check=False, timeout=60)
        lines = second.stderr.decode().splitlines()
        assert second.returncode == 1, lines
        assert lines[0] == (f"layerbootd: error: layerbootd (PID {first.proc.pid}) is already using the store at "
                            f"{profiles.paths.root} (it holds {profiles.paths.daemon_lock})"), lines
        assert lines[1].startswith("layerbootd: hint: stop it first") and len(lines) == 2
        assert leftover.exists(), "the refused daemon must not clean up under the running one"
        assert first.get("/status").status == 200
    finally:
        first.kill9()
    # the kernel dropped the lock with the killed daemon: a new one starts (and cleans up after the crash)
    again = Daemon(profiles.paths, config, tmp_path / "again.log").start()
    try:
        assert not leftover.exists()
        assert "removed temp file meta/.x.json.abc123.tmp" in again.log.read_text()
    finally:
        again.stop()
