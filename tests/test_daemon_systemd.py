"""layerbootd under a service manager: sd_notify readiness and watchdog, SIGHUP reload, journal fields, and the
unit files' hardening score."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from layerboot import systemd
from layerboot.overlays.profile import Profiles
from layerboot.run import run, tool_path
from server_daemon import Daemon, boot_profile, write_config

UNITS = Path(__file__).resolve().parents[1] / "server" / "systemd"
UNKNOWN = "52:54:00:99:99:99"


class NotifySocket:
    """What systemd's notify socket receives: one datagram per sd_notify call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.seen.append(message)
            if key in message and (value is None or message[key] == value):
                return message
        raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {self.seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notified(profiles: Profiles, make_layer, tmp_path: Path):
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, unknown_mac="refuse")
    daemon = Daemon(profiles.paths, config, tmp_path / "daemon.log")
    sock = NotifySocket(tmp_path / "notify")
    daemon.start(env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "400000"})
    yield daemon, sock, config
    daemon.stop()
    sock.close()


def test_ready_watchdog_reload_and_stop_are_reported(notified, profiles: Profiles) -> None:
    daemon, sock, config = notified
    ready = sock.wait_for("READY", "1")
    assert ready["STATUS"].startswith(f"serving {profiles.paths.root} on http://127.0.0.1:")
    pings = 0
    while pings < 3:                                   # WATCHDOG_USEC=0.4 s: a ping every 0.2 s
        sock.wait_for("WATCHDOG", "1", timeout=2)
        pings += 1
    assert daemon.get(f"/boot/{UNKNOWN}.ipxe").status == 403

    pid = daemon.proc.pid
    config.write_text(config.read_text().replace('unknown_mac = "refuse"', 'unknown_mac = "default"\n'
                                                 'default_profile = "p1"\nbake_workers = 3\naccess_log = true'))
    os.kill(pid, signal.SIGHUP)
    reloading = sock.wait_for("RELOADING", "1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    back = sock.wait_for("READY", "1")
    assert back["STATUS"] == "reloaded: server.unknown_mac, server.default_profile"
    assert daemon.proc.poll() is None and daemon.proc.pid == pid
    script = daemon.get(f"/boot/{UNKNOWN}.ipxe")              # the new policy took effect, same process
    assert script.status == 200 and script.text.startswith("#!ipxe")
    log = daemon.log.read_text()
    assert "reloaded; these settings change only at the next restart: server.bake_workers" in log

    config.write_text("[server\nbroken")
    os.kill(pid, signal.SIGHUP)
    failed = sock.wait_for("READY", "1")
    assert failed["STATUS"] == "reload failed; running with the previous configuration"
    assert "reload failed, keeping the running configuration:" in daemon.log.read_text()
    assert daemon.get(f"/boot/{UNKNOWN}.ipxe").status == 200

    daemon.proc.terminate(timeout=15)
    sock.wait_for("STOPPING", "1", timeout=5)
    assert daemon.proc.wait() == 0
    daemon.proc = None


def test_access_log_is_on_by_default_and_journal_lines_carry_priorities(profiles: Profiles, make_layer,
                                                                        tmp_path: Path) -> None:
    """With stderr going to journald ($JOURNAL_STREAM names it) and no native socket to talk to, each record
    is one '<priority>message' line; no logger names anywhere."""
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    log = tmp_path / "daemon.log"
    log.touch()
    st = log.stat()
    daemon = Daemon(profiles.paths, config, log)
    daemon.start(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        assert daemon.get("/status").status == 200
        assert daemon.get(f"/boot/{UNKNOWN}.ipxe").status == 403
    finally:
        daemon.stop()
    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>") and " GET /status 200 " in line for line in lines), lines
    assert any(line.startswith("<4>refused unknown MAC") for line in lines), lines
    assert not any("layerboot.server" in line for line in lines), lines


def test_journal_handler_sends_structured_fields(tmp_path: Path) -> None:
    path = tmp_path / "journal.socket"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(path))
    handler = systemd.JournalHandler("layerbootd", socket_path=str(path))
    logger = logging.getLogger("layerboot.test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("GET %s %d", "/objects/x", 404,
                       extra={"fields": {"REMOTE_ADDR": "10.0.0.5", "STATUS": 404, "duration_ms": "1.5"}})
        logger.error("forged\nGET /objects/y 200")         # node text cannot start a record of its own
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("bake failed")
        first, second, third = journal.recv(65536), journal.recv(65536), journal.recv(65536)
    finally:
        logger.removeHandler(handler)
        handler.close()
        journal.close()
    fields = dict(line.split(b"=", 1) for line in first.splitlines())
    assert fields[b"MESSAGE"] == b"GET /objects/x 404" and fields[b"PRIORITY"] == b"4"
    assert fields[b"SYSLOG_IDENTIFIER"] == b"layerbootd" and fields[b"LOGGER"] == b"layerboot.test.journal"
    assert (fields[b"REMOTE_ADDR"], fields[b"STATUS"], fields[b"DURATION_MS"]) == (b"10.0.0.5", b"404", b"1.5")
    assert dict(line.split(b"=", 1) for line in second.splitlines())[b"MESSAGE"] == b"forged\\nGET /objects/y 200"
    start = third.index(b"MESSAGE\n") + len(b"MESSAGE\n")       # a traceback: binary-safe multi-line framing
    (length,) = struct.unpack("<Q", third[start:start + 8])
    message = third[start + 8:start + 8 + length].decode()
    assert message.startswith("bake failed\n  Traceback") and message.endswith("  ValueError: bad")


def test_watchdog_interval_and_notify_without_a_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # another pid's
    assert systemd.watchdog_interval({}) is None
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


@pytest.mark.skipif(tool_path("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit, threshold", [("layerbootd.service", 3.0), ("layerboot-pxe.service", 3.0)])
def test_unit_hardening_score(unit: str, threshold: float) -> None:
    """systemd-analyze security, offline (no running systemd needed): exposure at most 3.0 of 10."""
    result = run(["systemd-analyze", "security", "--offline=yes", f"--threshold={int(threshold * 10)}",
                  UNITS / unit], check=False)
    score = float(result.text.strip().splitlines()[-1].split("exposure level for")[1].split(":")[1].split()[0])
    assert result.returncode == 0 and score <= threshold, result.text[-2000:]
    text = (UNITS / unit).read_text()
    assert "ExecStart=/opt/layerboot/bin/" in text          # what .ci/install installs


def test_units_ship_with_the_package() -> None:
    from importlib.resources import files
    shipped = {p.name for p in files("layerboot.server").joinpath("systemd").iterdir()}
    assert {"layerbootd.service", "layerboot-pxe.service"} <= shipped
    unit = (UNITS / "layerbootd.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "User=layerboot",
                 "StateDirectory=layerboot"):
        assert line in unit
