"""Power control against real implementations on loopback: OpenIPMI's ipmi_sim (IPMI v2.0 lanplus through
ipmitool), the sushy-tools Redfish emulator, and a QEMU guest through QMP; plus the root-only power file."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.server.monitor.power import PowerTarget, Targets, load_targets, power
from layerboot.tools.cli import main
from powerlab import BMC_PASSWORD, ipmi_bmc, qmp_guest, redfish_bmc, write_power_file

MAC = "52:54:00:12:34:56"


def cli(store: Path, *args: str) -> int:
    return main(["--store", str(store), *args])


def power_json(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = cli(store, "power", *args, "--json")
    captured = capsys.readouterr()
    assert BMC_PASSWORD not in captured.out + captured.err
    return code, json.loads(captured.out)


@pytest.mark.root
def test_ipmi_power_through_ipmi_sim(store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`layerboot power` drives a real IPMI v2.0 BMC (ipmi_sim) with ipmitool; the password never shows."""
    root = store.paths.root
    with ipmi_bmc(tmp_path / "bmc") as bmc:
        write_power_file(store.paths.state / "power.toml", {MAC: bmc["entry"]})
        assert power_json(root, capsys, "status", MAC)[1]["nodes"] == [
            {"mac": MAC, "driver": "ipmi", "state": "off", "error": None}]
        assert power_json(root, capsys, "on", MAC)[1]["nodes"][0]["state"] == "on"
        calls = bmc["calls"].read_text().splitlines()
        assert "set power 1" in calls
        mark = len(calls)
        assert power_json(root, capsys, "cycle", MAC)[1]["nodes"][0]["state"] == "on"
        assert "set power 0" in bmc["calls"].read_text().splitlines()[mark:]     # the chassis went off ...
        assert power_json(root, capsys, "off", MAC)[1]["nodes"][0]["state"] == "off"
        # a wrong password: one line naming the BMC, exit 1, and the password in no output
        write_power_file(store.paths.state / "power.toml", {MAC: bmc["entry"] | {"password": "wrong-pass"}})
        code, data = power_json(root, capsys, "status", MAC)
        assert code == 1 and "127.0.0.1" in data["nodes"][0]["error"] and "wrong-pass" not in json.dumps(data)


@pytest.mark.root
def test_redfish_power_through_the_sushy_emulator(tmp_path: Path) -> None:
    with redfish_bmc(tmp_path / "redfish") as bmc:
        entry = dict(bmc["entry"])
        target = PowerTarget(MAC, "redfish", {k: v for k, v in entry.items() if k not in ("driver", "password")},
                             entry["password"])

        async def scenario() -> list[str]:
            states = [await power(target, "status", timeout=40)]
            states.append(await power(target, "on", timeout=40))        # the emulator applies it 1-11 s later
            states.append(await power(target, "cycle", timeout=40))     # no PowerCycle offered: ForceRestart
            states.append(await power(target, "off", timeout=40))
            return states

        assert asyncio.run(scenario()) == ["off", "on", "on", "off"]
        wrong = PowerTarget(MAC, "redfish", target.options, "not-the-password")
        with pytest.raises(LayerbootError, match=r"refused the login") as err:
            asyncio.run(power(wrong, "status", timeout=20))
        assert "not-the-password" not in str(err.value)
        resets = [line for line in bmc["log"].read_text().splitlines() if "POST" in line and "Reset" in line]
        assert len(resets) == 3 and all('" 204' in line or '" 200' in line for line in resets), resets


@pytest.mark.root
@pytest.mark.qemu
def test_qmp_power_of_a_qemu_guest(store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with qmp_guest(tmp_path / "guest") as guest:
        write_power_file(store.paths.state / "power.toml", {MAC: guest["entry"]})
        root = store.paths.root
        assert power_json(root, capsys, "status", MAC)[1]["nodes"][0]["state"] == "off"     # started with -S
        assert power_json(root, capsys, "on", MAC)[1]["nodes"][0]["state"] == "on"
        assert power_json(root, capsys, "off", MAC)[1]["nodes"][0]["state"] == "off"
        assert power_json(root, capsys, "cycle", MAC)[1]["nodes"][0]["state"] == "on"
        assert guest["process"].poll() is None                       # the "chassis" (QEMU) stays up
    code, data = power_json(root, capsys, "status", MAC)              # QEMU gone: one clear error
    assert code == 1 and "cannot connect to QMP socket" in data["nodes"][0]["error"]


def test_power_file_is_root_only_and_checked(store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_power_file(tmp_path / "power.toml", {MAC: {"driver": "ipmi", "host": "10.9.9.9", "username": "u",
                                                            "password": "pw-123456"}})
    target = load_targets(path)[MAC]
    assert target.password == "pw-123456" and "pw-123456" not in repr(target)
    path.chmod(0o640)
    with pytest.raises(LayerbootError, match=r"open to group or others \(mode 0640\)") as err:
        load_targets(path)
    assert err.value.hint == f"it holds passwords: chmod 600 {path}"
    path.chmod(0o600)
    path.write_text('["52:54:00:12:34:56"]\ndriver = "ipmi"\nhost = "h"\nflavour = "x"\n')
    with pytest.raises(LayerbootError, match=r'\["52:54:00:12:34:56"\]\.flavour: unknown key for the ipmi driver'):
        load_targets(path)
    path.write_text('["not-a-mac"]\ndriver = "qmp"\nsocket = "/x"\n')
    with pytest.raises(LayerbootError, match=r"is not a MAC address"):
        load_targets(path)
    path.write_text('["52:54:00:12:34:56"]\ndriver = "redfish"\n')
    with pytest.raises(LayerbootError, match=r"\.url: the redfish driver needs it"):
        load_targets(path)
    with pytest.raises(LayerbootError, match=r"has no power control configured"):
        Targets(tmp_path / "absent.toml").get(MAC)
    if os.geteuid() == 0:   # the CLI refuses nothing to root, and lists nodes without secrets
        write_power_file(store.paths.state / "power.toml", {MAC: {"driver": "qmp", "socket": "/run/x.qmp"}})
        assert cli(store.paths.root, "power", "list", "--json") == 0
        assert json.loads(capsys.readouterr().out)["nodes"] == [{"mac": MAC, "driver": "qmp", "address": "/run/x.qmp"}]
