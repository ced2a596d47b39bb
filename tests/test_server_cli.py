"""The admin and node commands around layerbootd: nodes, uploads, upload; the daemon's own command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from layerboot.overlays.profile import Profiles
from layerboot.run import run, tool_path
from layerboot.server.db import connect
from layerboot.server.main import JournalFormatter
from layerboot.server.nodes import AuthError, Event, Registry
from layerboot.tools.cli import main
from server_daemon import MAC, Daemon, boot_profile, write_config
from test_server_uploads import layer_upload


def cli(store: Path, *args: str) -> int:
    return main(["--store", str(store), *args])


def test_nodes_register_list_show_set_profile_remove(profiles: Profiles, make_layer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    boot_profile(profiles, make_layer, tmp_path, "p2")
    root = profiles.paths.root
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "node.pub").write_bytes(key.export_public_key())
    assert cli(root, "nodes", "register", "52-54-00-12-34-56", "--profile", "p1", "--ssh-key",
               str(tmp_path / "node.pub")) == 0
    out = capsys.readouterr().out
    token = out.split("stored): ")[1].split()[0]
    registry = Registry(connect(profiles.paths.database))
    assert registry.authenticate(MAC, token).profile == "p1"
    assert token not in profiles.paths.database.read_bytes().decode("latin-1")   # only its hash is stored
    assert len(registry.ssh_keys(MAC)) == 1

    assert cli(root, "nodes", "register", MAC, "--profile", "p1") == 1
    assert "already registered" in capsys.readouterr().err
    assert cli(root, "nodes", "register", "02:00:00:00:00:01", "--profile", "nope") == 1
    assert "no profile named 'nope'" in capsys.readouterr().err
    (tmp_path / "bad.pub").write_text("ssh-ed25519 AAAAnotakey")
    assert cli(root, "nodes", "add-key", MAC, str(tmp_path / "bad.pub")) == 1
    err = capsys.readouterr().err
    assert "not an OpenSSH public key" in err and "Traceback" not in err

    registry.record_event(MAC, Event(stage="switch-root", ok=True, generation=2, serial=2, elapsed=4.2))
    registry.record_event(MAC, Event(stage="layers", ok=False, generation=2, message="sha256 mismatch"))
    assert cli(root, "nodes") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:3] == ["MAC", "PROFILE", "LAST"]
    row = listing[1].split()
    assert row[0] == MAC and row[1] == "p1" and "layers" in listing[1] and "FAILED" in listing[1]
    assert row[-2] == "1"   # failures
    assert cli(root, "nodes", "show", MAC, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["last_generation"] == 2 and [e["stage"] for e in shown["events"]] == ["switch-root", "layers"]
    assert cli(root, "nodes", "show", MAC) == 0
    assert "sha256 mismatch" in capsys.readouterr().out

    assert cli(root, "nodes", "set-profile", MAC, "p2") == 0
    assert registry.get(MAC).profile == "p2"
    assert cli(root, "nodes", "remove", MAC) == 0
    with pytest.raises(AuthError):
        registry.authenticate(MAC, token)
    assert cli(root, "nodes", "show", MAC) == 1
    assert "no node 52:54:00:12:34:56 is registered" in capsys.readouterr().err


def test_upload_command_waits_for_the_bake(profiles: Profiles, make_layer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    _, token = daemon.registry().register(MAC, "p1")
    assert cli(profiles.paths.root, "uploads", "policy", "p1", "auto") == 0
    daemon.start()
    try:
        upload = tmp_path / "change.tar.zst"
        upload.write_bytes(layer_upload({"etc/cli": b"cli\n"}))
        assert main(["upload", str(upload), "--server", daemon.url, "--node", MAC, "--token", token,
                     "--wait", "30"]) == 0
        out = capsys.readouterr().out
        assert "bytes received, received" in out and ": baked, layer " in out and "generation 3" in out
        assert main(["upload", str(upload), "--server", daemon.url, "--node", MAC, "--token", "0" * 48]) == 1
        assert "refused by the server: 401 unknown or expired token" in capsys.readouterr().err
        assert cli(profiles.paths.root, "uploads", "list") == 0
        assert "change.tar.zst" in capsys.readouterr().out
    finally:
        daemon.stop()


def test_watcher_picks_up_a_file_renamed_into_a_node_area(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, upload_policy="auto")
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    daemon.registry().register(MAC, "p1")
    daemon.start()
    try:
        area = profiles.paths.incoming / MAC.replace(":", "-")
        area.mkdir(exist_ok=True)
        (area / ".x.part").write_bytes(layer_upload({"etc/watched": b"w\n"}))
        time.sleep(0.5)
        os.rename(area / ".x.part", area / "watched.tar.zst")
        deadline = time.monotonic() + 3.0   # the sweep runs every 5 s: this is watchdog's doing
        gen = profiles.current("p1").number
        while profiles.current("p1").number == gen:
            assert time.monotonic() < deadline, daemon.log.read_text()
            time.sleep(0.05)
        assert not list(area.iterdir())
    finally:
        daemon.stop()


def test_full_queue_refuses_new_uploads_with_503(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, queue_size=1)
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    _, token = daemon.registry().register(MAC, "p1")
    daemon.start()
    try:
        first = daemon.request("PUT", f"/nodes/{MAC}/uploads/a.tar.zst", token=token,
                               body=layer_upload({"etc/a": os.urandom(30_000_000)}))
        assert first.status == 202
        second = daemon.request("PUT", f"/nodes/{MAC}/uploads/b.tar.zst", token=token,
                                body=layer_upload({"etc/b": b"b"}), headers={"Accept": "application/json"})
        assert second.status == 503 and "queue is full" in second.json()["error"]
        assert second.headers["retry-after"] == "30"
    finally:
        daemon.stop()


def test_daemon_command_line(tmp_path: Path) -> None:
    layerbootd = tool_path("layerbootd", Path(sys.executable).parent)
    assert layerbootd, "the layerbootd console script is not installed"
    assert "--config" in run([layerbootd, "--help"]).text
    bad = run([layerbootd, "--config", str(tmp_path / "missing.toml")], check=False)
    assert bad.returncode == 1
    assert bad.stderr.decode().strip() == f"layerbootd: error: config file {tmp_path / 'missing.toml'} does not exist"
    (tmp_path / "c.toml").write_text(f'[store]\nroot = "{tmp_path / "nostore"}"\n')
    nostore = run([layerbootd, "--config", str(tmp_path / "c.toml")], check=False)
    assert nostore.returncode == 1 and "no layer store at" in nostore.stderr.decode()
    assert "Traceback" not in nostore.stderr.decode()


def test_journald_lines_carry_syslog_priorities() -> None:
    record = logging.LogRecord("layerboot.server", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    assert JournalFormatter(journal=True).format(record) == "<4>disk full"     # the logger is a journal field
    assert JournalFormatter(journal=False).format(record).endswith(" WARNING: disk full")


def test_boot_tokens_expire_unless_used_and_only_the_newest_stay(store, tmp_path: Path) -> None:
    from layerboot.server import nodes
    registry = Registry(connect(store.paths.database), boot_token_ttl=1000)
    registry.register(MAC, "p1")
    first = registry.issue_boot_token(MAC)
    hashed = nodes.token_hash(first)
    now = time.time()
    registry.conn.execute("UPDATE boot_tokens SET created = ? WHERE hash = ?", (now - 900, hashed))
    assert registry.node_for_token(first).mac == MAC          # still valid, and its use refreshes it
    used = registry.conn.execute("SELECT created FROM boot_tokens WHERE hash = ?", (hashed,)).fetchone()[0]
    assert used > now - 5
    registry.conn.execute("UPDATE boot_tokens SET created = ? WHERE hash = ?", (now - 1001, hashed))
    assert registry.node_for_token(first) is None              # unused for longer than the TTL
    tokens = [registry.issue_boot_token(MAC) for _ in range(nodes.BOOT_TOKENS_KEPT + 1)]
    assert registry.node_for_token(tokens[0]) is None
    assert all(registry.node_for_token(t).mac == MAC for t in tokens[1:])


@pytest.mark.skipif(not tool_path("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["layerbootd.service", "layerboot-pxe.service"])
def test_systemd_unit_verifies(unit: str, tmp_path: Path) -> None:
    """systemd-analyze verify, with ExecStart pointing at this environment's commands instead of /opt/layerboot
    (the fresh Debian install test verifies the installed units as they are, man pages included)."""
    import layerboot.server
    text = (Path(layerboot.server.__file__).parent / "systemd" / unit).read_text()
    assert "ExecStart=/opt/layerboot/bin/layerboot" in text
    (tmp_path / unit).write_text(text.replace("/opt/layerboot/bin/", str(Path(sys.executable).parent) + "/"))
    result = run(["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)], check=False)
    assert result.returncode == 0 and unit not in result.stderr.decode(), result.stderr.decode()
