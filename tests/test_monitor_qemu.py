"""The whole ladder on a real node (issue 14's "done when"): a QEMU node with a cache disk boots generation 2 and
sends heartbeats (its last good generation); generation 3 has a layer whose served bytes are bad, and the node
reboots into it and fails. layerbootd's monitor opens a boot-failing incident, power-cycles the node through
QMP, then pins it to its last good generation and power-cycles it again; the node boots generation 2 from a
manifest signed afresh with a serial above generation 3's (its cache disk refuses anything lower), the incident
closes by itself, the mails arrive at a real SMTP server and /metrics counts each step.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.client_layer import client_layer_image
from layerboot.build.initrd import build_initrd
from layerboot.build.qemu import NodeConfig, QemuNode
from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from layerboot.run import run
from layerboot.server.monitor.power import load_targets, power
from layerboot.server.monitor.records import MonitorRecords
from notifylab import smtp_server, wait_until
from powerlab import write_power_file
from server_daemon import MAC, Daemon, write_config
from test_boot_qemu import CACHE, CMDLINE, assert_clean, kernel, store_with_cached_key  # noqa: F401 - fixture
from test_monitor_daemon import metric

UUID = "6c61796b-626f-4f74-8d6f-6e69746f7231"   # the node's DMI product UUID and serial (QEMU -uuid, -smbios)
SERIAL = "LB-MONITOR-01"

pytestmark = [pytest.mark.qemu, pytest.mark.root]

# The node's init: say what booted, then send heartbeats every 2 s for as long as it runs.
NODE_INIT = r"""#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
echo "NODE-UP $(cat /run/layerboot/status)"
layerboot heartbeat --loop --interval 2 &
while true; do sleep 60; done
"""
MONITOR_TOML = """
[monitor]
interval = 1
heartbeat_timeout = 600
power_file = "{power}"

[monitor.incidents.boot-failing]
clear_after = "2s"
notify = ["log", "email"]
ladder = [
  {{ action = "power-cycle", wait = "40s" }},
  {{ action = "power-cycle", boot = "last-good", wait = "5m" }},
  {{ action = "notify" }},
  {{ action = "flag" }},
]

[notify]
email_to = ["ops@example.test"]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
"""
FAILS = (r"Kernel panic", r"Traceback")


def test_boot_failure_ladder_power_cycles_then_boots_last_good(kernel, tmp_path_factory, tmp_path: Path,  # noqa: ANN001,F811
                                                                ) -> None:
    work = tmp_path_factory.mktemp("monitor-qemu")
    paths = Paths(work / "store")
    store = store_with_cached_key(paths)
    base = store.import_tree(build_busybox_tree(work / "base", init_script=NODE_INIT), kind="base", all_root=True,
                             description="busybox base with a heartbeat loop").digest
    client = store.import_squashfs(client_layer_image(work / "client.squashfs", cache=CACHE), kind="overlay",
                                   base=base, description="layerboot client").digest
    initrd = build_initrd(kernel, paths.public_key, work / "initrd.img", cache=CACHE / "initrd")
    profiles = Profiles(store)
    profiles.create("node", base, cmdline=CMDLINE, kernel=store.import_boot_file(kernel.image, kind="kernel").digest,
                    initrd=store.import_boot_file(initrd.path, kind="initrd").digest)
    good = profiles.add("node", client)                                       # generation 2
    qmp = work / "node.qmp"
    power_file = write_power_file(work / "power.toml", {MAC: {"driver": "qmp", "socket": str(qmp)}})
    cache_disk = work / "cache.img"
    with open(cache_disk, "wb") as f:
        f.truncate(128 << 20)
    run(["mkfs.ext4", "-q", "-L", "layerboot-cache", cache_disk])

    with smtp_server() as (mailbox, smtp_port):
        # verify_objects off: the damaged layer must reach the node (the server's own check would refuse it
        # first, which is tested elsewhere); this test is about the node failing and the ladder bringing it back
        config = write_config(work / "layerboot.toml", paths, verify_objects=False)
        config.write_text(config.read_text() + MONITOR_TOML.format(power=power_file, smtp_port=smtp_port))
        daemon = Daemon(paths, config, work / "layerbootd.log")
        registry = daemon.registry()
        # the asset key is the DMI UUID and serial QEMU gives the node: stage1 claims its node secret with it,
        # and the heartbeat agent sends with that secret
        registry.register(MAC, "node", asset_key=f"{UUID}:{SERIAL}".lower())
        records = MonitorRecords(registry.db)
        daemon.start()
        append = (f"{CMDLINE} layerboot.server=http://10.0.2.2:{daemon.port} layerboot.node={MAC} "
                  f"layerboot.profile=node layerboot.token={daemon.boot_token(MAC)} "
                  "layerboot.cache=LABEL=layerboot-cache")
        node_config = NodeConfig(kernel=kernel.image, initrd=initrd.path, append=append, mac=MAC, no_reboot=False,
                                 uuid=UUID, serial=SERIAL, disks=[cache_disk],
                                 extra=["-no-shutdown", "-qmp", f"unix:{qmp},server=on,wait=off"])
        try:
            with QemuNode(node_config, tmp_path / "serial.log") as node:
                first = node.wait_for(r"^NODE-UP ", timeout=300, fail=(r"layerboot: FAILED", *FAILS))
                assert f'"generation": {good.number}' in first.text
                wait_until(lambda: registry.get(MAC).good_generation == good.number, 180, "a heartbeat")

                # generation 3 brings a layer whose bytes on the server are damaged; the node reboots into it
                bad_tree = work / "bad"
                (bad_tree / "etc").mkdir(parents=True)
                (bad_tree / "etc/new-feature").write_text("3\n")
                bad = store.import_tree(bad_tree, kind="overlay", base=base, all_root=True).digest
                broken = profiles.add("node", bad)
                obj = paths.object(bad)
                data = obj.read_bytes()
                obj.chmod(0o644)
                obj.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
                asyncio.run(power(load_targets(power_file)[MAC], "cycle"))
                failed = node.wait_for(r"layerboot: FAILED: layers: ", timeout=300, start=node.lines.index(first),
                                       fail=FAILS)
                assert f"layer {bad[:12]} failed verification" in failed.text

                # the monitor: incident, power-cycle, pin to generation 2 + power-cycle, boot, close
                incident = wait_until(lambda: records.list(type="boot-failing", states=("open", "paused", "closed")),
                                      60, "the boot-failing incident")[0]
                back = node.wait_for(r"^NODE-UP ", timeout=600, start=node.lines.index(failed), fail=FAILS)
                assert f'"generation": {good.number}' in back.text
                closed = wait_until(lambda: records.get(incident.id).state == "closed" and records.get(incident.id),
                                    60, "the incident to close by itself")
                wait_until(lambda: len(mailbox.subjects()) >= 2, 30, "the opened and closed mails")
                metrics = daemon.get("/metrics").text
        finally:
            daemon.stop()

    text = node.text()
    manifests = re.findall(r"layerboot: manifest: profile node generation (\d+) serial (\d+)", text)
    assert manifests[0] == (str(good.number), str(good.serial))
    assert (str(broken.number), str(broken.serial)) in manifests
    pinned_generation, pinned_serial = manifests[-1]
    assert int(pinned_generation) == good.number and int(pinned_serial) > broken.serial   # the cache took it
    assert text.count("layerboot: FAILED: layers: ") >= 1 and "lower than the last accepted" not in text
    assert registry.get(MAC).pinned_generation == good.number
    history = records.history(incident.id)
    steps = [(h.action, h.result, h.message) for h in history if h.kind == "step"]
    assert [s[:2] for s in steps] == [("power-cycle", "ok"), ("power-cycle", "ok")], history
    assert steps[0][2] == "power cycle through qmp: now on"
    assert steps[1][2] == (f"pinned to its last good generation {good.number} of node; "
                           "power cycle through qmp: now on")
    assert (closed.closed_by, closed.flagged) == ("cleared", False)
    assert incident.summary.startswith("boot failed (hash) in stage layers: layers: layer ")
    subjects = mailbox.subjects()
    assert subjects[0].startswith(f"[layerboot] boot-failing on {MAC} opened: boot failed (hash)")
    assert subjects[-1] == f"[layerboot] boot-failing on {MAC} closed (cleared)"
    assert metric(metrics, "layerboot_ladder_steps_total", type="boot-failing", action="power-cycle",
                  result="ok") == 2
    assert metric(metrics, "layerboot_power_actions_total", driver="qmp", action="cycle", result="ok") == 2
    assert metric(metrics, "layerboot_incidents_opened_total", type="boot-failing") == 1
    assert metric(metrics, "layerboot_incidents_open", type="boot-failing") == 0
    assert metric(metrics, "layerboot_node_generation", mac=MAC, profile="node") == good.number
    assert metric(metrics, "layerboot_node_state", mac=MAC, state="up") == 1
    assert metric(metrics, "layerboot_boot_seconds_count") >= 2
    assert metric(metrics, "layerboot_served_bytes_total") > 0
    assert_clean(node)
    log = daemon.log.read_text()
    assert "Traceback" not in log
    print(f"MONITOR-LADDER-PASS incident #{incident.id}: failed at {failed.seconds:.0f}s, back on generation "
          f"{good.number} (serial {pinned_serial}) at {back.seconds:.0f}s after QEMU start")
