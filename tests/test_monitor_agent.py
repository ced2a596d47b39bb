"""The node agent: what `layerboot heartbeat` collects (this machine's real /proc, a stage1 status file, an A/B
disk that fell back), its systemd units, and the detector that turns a fallback into an ab-fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from abdisk import bootable_profile, loop_disk
from layerboot.build import ab
from layerboot.build.disk_actions import DiskContext, execute
from layerboot.overlays.keys import load_public_key
from layerboot.run import run, tool_path
from layerboot.server.client import NODE_SECRET
from layerboot.server.monitor.agent import UNITS, ab_state, collect, install_units
from layerboot.server.monitor.detectors import Limits, conditions
from layerboot.server.monitor.model import Heartbeat
from layerboot.server.nodes import Node
from layerboot.tools.cli import main

MAC = "52:54:00:12:34:56"


def test_collect_reads_proc_and_the_stage1_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = tmp_path / "status"
    status.write_text(json.dumps({"stage": "switch_root", "ok": True, "profile": "web", "generation": 7,
                                  "serial": 31, "elapsed": 9.5}))
    data = collect(status_file=status)
    assert data["agent"].startswith("layerboot ") and data["uptime"] > 0 and len(data["load"]) == 3
    assert 0 < data["memory"]["available"] <= data["memory"]["total"]
    assert (data["profile"], data["generation"], data["serial"]) == ("web", 7, 31)
    assert "ab" not in data                                   # this host did not boot from an A/B slot
    beat = Heartbeat.from_json(data, received=1.0)            # what the server accepts
    assert beat.generation == 7 and beat.mem_total == data["memory"]["total"]
    status.write_text("not json")
    assert "generation" not in collect(status_file=status)
    assert main(["heartbeat", "--print"]) == 0
    assert json.loads(capsys.readouterr().out)["uptime"] > 0


def test_heartbeat_without_server_or_credential_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("LAYERBOOT_SERVER", "LAYERBOOT_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("layerboot.server.client.NODE_SECRET", Path("/nonexistent/node.secret"))
    monkeypatch.setattr("layerboot.server.client.boot_options", lambda cmdline=None: {})
    assert main(["heartbeat"]) == 1
    err = capsys.readouterr().err
    assert "missing --server, --node" in err and "Traceback" not in err
    assert main(["heartbeat", "--server", "http://127.0.0.1:9", "--node", MAC]) == 1
    err = capsys.readouterr().err
    assert "no node secret at /nonexistent/node.secret" in err and "Traceback" not in err
    secret = tmp_path / "node.secret"
    secret.write_text("lbs1." + "ab" * 24 + "\n")
    assert main(["heartbeat", "--server", "http://127.0.0.1:9", "--node", MAC, "--secret-file", str(secret)]) == 1
    assert "heartbeat: cannot talk to http://127.0.0.1:9" in capsys.readouterr().err


def test_heartbeat_units_are_valid_and_enabled(tmp_path: Path) -> None:
    written = install_units(tmp_path)
    assert [p.name for p in written] == list(UNITS)
    link = tmp_path / "etc/systemd/system/timers.target.wants/layerboot-heartbeat.timer"
    assert os.readlink(link) == "/etc/systemd/system/layerboot-heartbeat.timer"
    service = (tmp_path / "etc/systemd/system/layerboot-heartbeat.service").read_text()
    assert "ExecStart=/usr/bin/python3 -m layerboot heartbeat" in service
    assert "ConditionKernelCommandLine=layerboot.server" in service
    assert f"ConditionPathExists={NODE_SECRET}" in service     # skipped, not failed, without a write credential
    analyze = tool_path("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = tmp_path / "etc/systemd/system"
    result = run([analyze, "verify", units / "layerboot-heartbeat.timer", units / "layerboot-heartbeat.service"],
                 check=False)
    problems = [line for line in result.stderr.decode().splitlines() if "layerboot-heartbeat" in line]
    assert result.returncode == 0 and not problems, result.stderr.decode()
    (units / "layerboot-heartbeat.timer").write_text(written[1].read_text().replace("OnBootSec", "OnBotSec"))
    wrong = run([analyze, "verify", units / "layerboot-heartbeat.timer"], check=False).stderr.decode()
    assert "Unknown key 'OnBotSec'" in wrong                 # the check above would see a mistake
    assert not problems, result.stderr.decode()


@pytest.mark.root
def test_ab_fallback_is_reported_and_detected(profiles, make_layer, tmp_path: Path) -> None:
    base = bootable_profile(profiles, make_layer, tmp_path)
    public = load_public_key(profiles.paths.public_key)
    with loop_disk(tmp_path) as device:
        source = ab.source_from_store(profiles, "node", None, public)
        execute(ab.plan_install(device, source, public, slot_mib=64), DiskContext(device, workdir=tmp_path),
                report=lambda line: None)
        disk = ab.AbDisk(device, workdir=tmp_path)
        disk.mark_good("A")
        uuids = disk.layout().slot_uuids
        booted_a = f"console=ttyS0 layerboot.slot=UUID={uuids['A']}"
        assert ab_state(booted_a) == {"booted": "A", "wanted": "A", "fallback": False,
                                      "states": {"A": "good", "B": "empty"}}
        # generation 2 goes into B on trial; B never confirms, GRUB marks it bad and boots A again
        profiles.add("node", make_layer({"etc/motd": "v2\n"}, base=base))
        disk.update(ab.source_from_store(profiles, "node", None, public), public, tries=1)
        disk.save_state(disk.state().with_slot("B", "bad"))
        report = ab_state(booted_a)
        assert report == {"booted": "A", "wanted": "B", "fallback": True, "states": {"B": "bad", "A": "good"}}
    beat = Heartbeat.from_json({"ab": report, "generation": 1, "profile": "node"}, received=1000.0)
    node = Node(mac=MAC, profile="node", auto=False, created="", last_seen="1970-01-01T00:16:40+00:00",
                last_stage="switch_root", last_ok=True)
    found = conditions([node], {MAC: beat}, lambda p: 1, Limits(), now=1001.0)
    assert found == {(MAC, "ab-fallback"): "booted A/B slot A after falling back from B"}
    assert ab_state("console=ttyS0")["error"].startswith("this system did not boot from an A/B slot")
