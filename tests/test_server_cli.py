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
from layerboot.server.auth.nodesecret import NodeSecrets
from layerboot.server.nodes import Event, Registry
from layerboot.tools.cli import main
from server_daemon import MAC, Daemon, boot_profile, write_config
from test_server_uploads import layer_upload


def cli(store: Path, *args: str) -> int:
    return main(["--store", str(store), *args])


def test_nodes_register_list_show_set_profile_remove(profiles: Profiles, make_layer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], database_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    boot_profile(profiles, make_layer, tmp_path, "p2")
    root = profiles.paths.root
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, database=database_url)
    monkeypatch.setenv("LAYERBOOT_CONFIG", str(config))   # the commands use the database of this backend
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "node.pub").write_bytes(key.export_public_key())
    assert cli(root, "nodes", "register", "52-54-00-12-34-56", "--profile", "p1", "--ssh-key",
               str(tmp_path / "node.pub")) == 0
    out = capsys.readouterr().out
    token = out.split("stored): ")[1].split()[0]
    registry = Registry(connect(database_url))
    assert NodeSecrets(registry.db).node_of(token) == MAC and registry.get(MAC).profile == "p1"
    if database_url.startswith("sqlite:"):
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
    assert listing[0].split()[:3] == ["NAME", "MAC", "PROFILE"]      # a node registered by MAC only has no name
    row = listing[1].split()
    assert row[:3] == ["-", MAC, "p1"] and "layers" in listing[1] and "FAILED" in listing[1]
    assert row[-2] == "1"   # failures
    assert cli(root, "nodes", "show", MAC, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["last_generation"] == 2 and [e["stage"] for e in shown["events"]] == ["switch-root", "layers"]
    assert cli(root, "nodes", "show", MAC) == 0
    assert "sha256 mismatch" in capsys.readouterr().out

    assert cli(root, "nodes", "set-profile", MAC, "p2") == 0
    assert registry.get(MAC).profile == "p2"
    assert cli(root, "nodes", "remove", MAC) == 0
    assert NodeSecrets(registry.db).node_of(token) is None
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
        secret = tmp_path / "node.secret"
        secret.write_text(token + "\n")
        assert main(["upload", str(upload), "--server", daemon.url, "--node", MAC, "--secret-file", str(secret),
                     "--wait", "30"]) == 0
        out = capsys.readouterr().out
        assert "bytes received, received" in out and ": baked, layer " in out and "generation 3" in out
        secret.write_text("lbs1." + "0" * 48)
        assert main(["upload", str(upload), "--server", daemon.url, "--node", MAC, "--secret-file", str(secret)]) == 1
        assert "refused by the server: 401 unknown token or node secret" in capsys.readouterr().err
        # the boot token of the kernel command line is read-only: 403, and the message says what is needed
        secret.write_text(daemon.boot_token())
        assert main(["upload", str(upload), "--server", daemon.url, "--node", MAC, "--secret-file", str(secret)]) == 1
        err = capsys.readouterr().err
        assert "403 boot tokens are read-only: uploading needs the node secret" in err and "hint: " in err
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
