"""`layerboot nodes status|pin|unpin` and `layerboot incidents` as an admin reads them (text and --json), and
their one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.server.db import connect
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.nodes import Registry
from layerboot.settings import load_config
from layerboot.tools.cli import main
from server_daemon import MAC, OTHER_MAC, boot_profile
from test_monitor_records import beat


def cli(store: Path, *args: str) -> int:
    return main(["--store", str(store), *args])


def test_nodes_status_pin_and_incidents(profiles: Profiles, make_layer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    root = profiles.paths.root
    db = connect(profiles.paths.database)
    registry, records = Registry(db), MonitorRecords(db)
    registry.register(MAC, "p1")
    registry.register(OTHER_MAC, "p1")
    now = time.time()
    records.record_heartbeat(registry.get(MAC), beat(1, received=now - 5))
    assert cli(root, "nodes", "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MAC", "PROFILE", "STATE", "HEARTBEAT", "GEN/NEWEST", "GOOD", "PINNED", "INCIDENTS"]
    row = lines[1].split()
    assert row[:3] == [MAC, "p1", "up"] and 5 <= int(row[3].removesuffix("s")) < 60 and row[4:8] == [
        "ago", "1/2", "1", "-"]
    assert lines[2].split() == [OTHER_MAC, "p1", "unknown", "never", "-/2", "-", "-", "-"]

    # an incident as the monitor opens it; the admin pauses, resumes and closes it
    types = load_config(None).monitor_incidents
    incident = records.reconcile({(MAC, "boot-failing"): "boot failed (hash) in stage layers: x"}, types, {MAC},
                                 now).opened[0]
    assert cli(root, "incidents") == 0
    out = capsys.readouterr().out
    assert f"{incident.id}   boot-failing  {MAC}  open" in out and "1/4 power-cycle" in out
    assert cli(root, "nodes", "status", MAC, "--json") == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["incidents"] == [f"boot-failing #{incident.id}"]
    assert cli(root, "incidents", "pause", str(incident.id)) == 0
    assert capsys.readouterr().out == f"incident {incident.id} (boot-failing on {MAC}) is paused\n"
    assert cli(root, "incidents", "show", str(incident.id)) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"incident #{incident.id}: boot-failing on node {MAC} (paused)\n")
    assert "  -> 1. power-cycle, then wait 5m\n" in shown and "     2. power-cycle (boot the last good generation)" \
        in shown and "paused by admin" in shown
    assert cli(root, "incidents", "resume", str(incident.id), "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "open"
    assert cli(root, "incidents", "close", str(incident.id)) == 0
    capsys.readouterr()
    assert cli(root, "incidents", "close", str(incident.id)) == 1
    assert f"error: incident {incident.id} is closed already" in capsys.readouterr().err
    assert cli(root, "incidents", "list") == 0
    assert capsys.readouterr().out == "no incidents open (--all shows closed ones)\n"
    assert cli(root, "incidents", "list", "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out)["incidents"][0]["closed_by"] == "admin"
    assert cli(root, "incidents", "show", "999") == 1
    assert "error: no incident 999" in capsys.readouterr().err

    # pins: one line each, errors name the problem
    assert cli(root, "nodes", "pin", MAC, "1", "--reason", "testing") == 0
    assert capsys.readouterr().out == (f"{MAC} boots generation 1 of p1 (newest: 2) until "
                                       f"'layerboot nodes unpin {MAC}'\n")
    assert cli(root, "nodes", "status", MAC, "--json") == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["pinned_generation"] == 1
    assert cli(root, "nodes", "show", MAC) == 0
    assert "pinned: generation 1 (testing)" in capsys.readouterr().out
    assert cli(root, "nodes", "pin", MAC, "7") == 1
    assert "error: profile p1 has no generation 7 (it has 1-2)" in capsys.readouterr().err
    assert cli(root, "nodes", "unpin", MAC) == 0
    assert capsys.readouterr().out == f"{MAC} boots the newest generation of p1 again (2)\n"
    assert cli(root, "nodes", "unpin", MAC) == 1
    assert f"error: node {MAC} is not pinned" in capsys.readouterr().err
    assert cli(root, "nodes", "status", "52:54:00:00:00:09") == 1
    assert "no node 52:54:00:00:00:09 is registered" in capsys.readouterr().err
    db.close()
