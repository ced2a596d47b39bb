"""The monitor inside the real layerbootd, without QEMU: heartbeats over HTTP from `layerboot heartbeat`, a
node that goes silent opens a node-down incident, the ladder power-cycles it through a real IPMI BMC
(ipmi_sim), mails the admins (aiosmtpd) and posts to a webhook, flags it; a heartbeat closes it. The CLI and
/metrics show every step. Plus the config errors a user meets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.profile import Profiles
from layerboot.settings import load_config
from layerboot.tools.cli import main
from notifylab import smtp_server, wait_until, webhook_receiver
from powerlab import BMC_PASSWORD, ipmi_bmc, write_power_file
from server_daemon import MAC, Daemon, boot_profile, write_config

MONITOR_TOML = """
[monitor]
interval = 1
heartbeat_timeout = 5
power_file = "{power}"

[monitor.incidents.node-down]
clear_after = "1s"
notify = ["log", "email", "webhook"]
ladder = [
  {{ action = "power-cycle", wait = "1s" }},
  {{ action = "notify", message = "power-cycled, still down" }},
  {{ action = "flag" }},
]

[monitor.incidents.stale-generation]
enabled = false

[notify]
email_to = ["ops@example.test"]
email_from = "layerbootd@example.test"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
webhook_url = "{webhook}"
"""


def cli(daemon: Daemon, *args: str) -> int:
    return main(["--config", str(daemon.config), *args])


def cli_json(daemon: Daemon, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli(daemon, *args, "--json") == 0
    return json.loads(capsys.readouterr().out)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.root
def test_silent_node_walks_the_node_down_ladder(profiles: Profiles, make_layer, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    paths = profiles.paths
    with smtp_server() as (mailbox, smtp_port), webhook_receiver() as (hooks, hook_url), \
            ipmi_bmc(tmp_path / "bmc") as bmc:
        power = write_power_file(tmp_path / "power.toml", {MAC: bmc["entry"]})
        config = write_config(tmp_path / "layerboot.toml", paths)
        config.write_text(config.read_text() + MONITOR_TOML.format(power=power, smtp_port=smtp_port,
                                                                   webhook=hook_url))
        daemon = Daemon(paths, config, tmp_path / "layerbootd.log")
        _, token = daemon.registry().register(MAC, "p1")
        daemon.start()
        try:
            secret = tmp_path / "node.secret"        # where stage1 keeps it on a node: root only
            secret.write_text(token + "\n")
            secret.chmod(0o600)
            monkeypatch.setenv("LAYERBOOT_SERVER", daemon.url)
            monkeypatch.setenv("LAYERBOOT_NODE", MAC)
            # the node agent's heartbeat, as the systemd timer runs it
            assert cli(daemon, "heartbeat", "--secret-file", str(secret)) == 0 and "heartbeat sent" in capsys.readouterr().out
            status = cli_json(daemon, capsys, "nodes", "status")["nodes"][0]
            assert status["state"] == "up" and status["heartbeat"]["load"] is not None
            # silence: node-down opens, the ladder power-cycles through IPMI, mails, posts, flags
            incident = wait_until(lambda: cli_json(daemon, capsys, "incidents", "list")["incidents"], 30,
                                  "the node-down incident")[0]
            assert (incident["type"], incident["mac"], incident["state"]) == ("node-down", MAC, "open")
            wait_until(lambda: cli_json(daemon, capsys, "incidents", "show", str(incident["id"]))["flagged"], 60,
                       "the flag step")
            shown = cli_json(daemon, capsys, "incidents", "show", str(incident["id"]))
            steps = [(h["action"], h["result"]) for h in shown["history"] if h["kind"] == "step"]
            assert steps == [("power-cycle", "ok"), ("notify", "ok"), ("flag", "ok")], shown["history"]
            cycled = next(h for h in shown["history"] if h["action"] == "power-cycle")["message"]
            assert cycled == "power cycle through ipmi: now on"
            assert "set power 1" in bmc["calls"].read_text().splitlines()
            # a heartbeat: the condition clears and the incident closes by itself
            assert cli(daemon, "heartbeat", "--secret-file", str(secret)) == 0 and "heartbeat sent" in capsys.readouterr().out
            wait_until(lambda: not cli_json(daemon, capsys, "incidents", "list")["incidents"], 30, "the close")
            closed = cli_json(daemon, capsys, "incidents", "show", str(incident["id"]))
            assert (closed["state"], closed["closed_by"]) == ("closed", "cleared")
            subjects = wait_until(lambda: len(mailbox.subjects()) >= 4 and mailbox.subjects(), 30, "four mails")
            assert subjects[0].startswith(f"[layerboot] node-down on {MAC} opened: no heartbeat since ")
            assert subjects[1:] == [f"[layerboot] node-down on {MAC}: power-cycled, still down",
                                    f"[layerboot] node-down on {MAC}: needs an admin",
                                    f"[layerboot] node-down on {MAC} closed (cleared)"]
            assert mailbox.recipients[0] == ["ops@example.test"]
            body = mailbox.messages[2].get_content()
            assert f"incident #{incident['id']}: node-down on node {MAC}" in body and "power cycle through ipmi" in body
            assert [h["json"]["event"] for h in hooks] == ["opened", "notify", "flag", "closed"]
            assert hooks[0]["content_type"] == "application/json" and hooks[0]["json"]["incident"]["mac"] == MAC
            text = daemon.get("/metrics").text
            assert metric(text, "layerboot_ladder_steps_total", type="node-down", action="power-cycle",
                          result="ok") == 1
            assert metric(text, "layerboot_ladder_steps_total", type="node-down", action="flag", result="ok") == 1
            assert metric(text, "layerboot_incidents_opened_total", type="node-down") == 1
            assert metric(text, "layerboot_incidents_open", type="node-down") == 0
            assert metric(text, "layerboot_power_actions_total", driver="ipmi", action="cycle", result="ok") == 1
            assert metric(text, "layerboot_notifications_total", channel="email", result="ok") == 4
            assert metric(text, "layerboot_heartbeats_total") == 2
            assert metric(text, "layerboot_nodes", state="up") == 1
            assert metric(text, "layerboot_node_state", mac=MAC, state="up") == 1
            assert metric(text, "layerboot_upload_queue_depth") == 0
            log = daemon.log.read_text()
            assert f"incident #{incident['id']} opened: node-down on {MAC}" in log
            assert BMC_PASSWORD not in log and token not in log
        finally:
            daemon.stop()


def test_heartbeat_endpoint_checks_credential_and_body(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    config.write_text(config.read_text() + "\n[monitor]\nenabled = false\n")
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    _, token = daemon.registry().register(MAC, "p1")
    daemon.start()
    try:
        path = f"/nodes/{MAC}/heartbeat"
        assert daemon.request("POST", path, body=b"{}").status == 401
        assert daemon.request("POST", path, body=b"{}", token="0" * 48).status == 401
        reply = daemon.request("POST", path, body=b'{"load": "high"}', token=token,
                               headers={"Accept": "application/json"})
        assert reply.status == 400 and "'load'" in reply.json()["error"]
        assert daemon.request("POST", path, body=b"x" * 20000, token=token).status == 413
        reply = daemon.request("POST", path, body=b'{"generation": 2, "profile": "p1"}', token=token)
        assert reply.status == 201 and daemon.registry().get(MAC).good_generation == 2
        assert daemon.get("/metrics").headers["content-type"].startswith("text/plain")
        assert daemon.get("/incidents").status == 401
    finally:
        daemon.stop()


@pytest.mark.parametrize("body, message", [
    ('[monitor.incidents.node-down]\nladder = [{ action = "reboot" }]\n',
     r"monitor\.incidents\.node-down\.ladder\[0\]\.action: expected one of power-cycle"),
    ('[monitor.incidents.node-down]\nladder = [{ action = "notify", wait = "soon" }]\n',
     r"monitor\.incidents\.node-down\.ladder\[0\]\.wait: expected a duration"),
    ('[monitor.incidents.node-down]\nladder = [{ action = "notify", boot = "last-good" }]\n',
     r"ladder\[0\]\.boot: only power-cycle and power-on boot a generation, not notify"),
    ('[monitor.incidents.node-dwn]\nafter = 5\n', r"monitor\.incidents\.node-dwn: unknown incident type"),
    ('[monitor.incidents.boot-failing]\nnotify = ["pager"]\n', r"monitor\.incidents\.boot-failing\.notify: unknown "
                                                                r"channel 'pager'"),
    ('[monitor.incidents.boot-failing]\nclear_after = -5\n', r"clear_after: a duration cannot be negative"),
    ('[notify]\nemail_to = "ops@example.test"\n', r"notify\.email_to: expected a list"),
])
def test_bad_monitor_config_names_file_and_key_path(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "layerboot.toml"
    path.write_text(body)
    with pytest.raises(LayerbootError, match=message) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")


def test_ladder_config_is_typed_and_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "layerboot.toml"
    path.write_text('[monitor.incidents.boot-failing]\nafter = "2m"\nladder = [\n'
                    '  { action = "power-cycle", boot = "last-good", wait = "90s", tries = 2, backoff = 2 },\n'
                    '  { action = "notify", channels = ["log"] },\n]\n')
    itype = load_config(path).monitor_incidents["boot-failing"]
    assert itype.after == 120 and itype.ladder[0].wait == 90 and itype.ladder[0].tries == 2
    assert load_config(path).monitor_incidents["node-down"].ladder[0].action == "power-cycle"   # the default
    assert main(["--config", str(path), "config", "show"]) == 0
    shown = capsys.readouterr().out
    assert '{ action = "power-cycle", wait = "90s", tries = 2, backoff = 2, boot = "last-good" }' in shown
    (tmp_path / "again.toml").write_text(shown)
    assert load_config(tmp_path / "again.toml") == load_config(path)


def test_daemon_refuses_a_channel_that_is_not_configured(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    config.write_text(config.read_text() + '\n[monitor.incidents.node-down]\nnotify = ["email"]\n')
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    with pytest.raises(RuntimeError, match="exited with 1"):
        daemon.start()
    log = daemon.log.read_text()
    assert "layerbootd: error: monitor.incidents.node-down.notify: channel 'email' is not configured" in log
    assert "hint: set notify.email_to" in log and "Traceback" not in log
