"""The monitor's records on SQLite and on a real PostgreSQL: heartbeats and the last good generation, the
incident model (thresholds, at most one open per node and type, damping, flap escalation, history, admin
states), ladder scheduling, detectors, and generation pins served as freshly signed manifests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.overlays.profile import Profiles
from layerboot.server.db import DatabaseConflict, connect
from layerboot.server.monitor.config import DEFAULT_TYPES, IncidentTypes, Step
from layerboot.server.monitor.detectors import Limits, conditions, failure_kind, node_state
from layerboot.server.monitor.model import Heartbeat
from layerboot.server.monitor.pins import boot_generation, check_pin, node_manifest
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.nodes import Event, Registry
from server_daemon import MAC, OTHER_MAC, boot_profile

T0 = 1_800_000_000.0


def types_with(**changes: dict) -> IncidentTypes:
    return IncidentTypes(tuple(dataclasses.replace(t, **changes.get(t.name.replace("-", "_"), {}))
                               for t in DEFAULT_TYPES.values()))


@pytest.fixture
def setup(profiles: Profiles, make_layer, tmp_path: Path, database_url: str):  # noqa: ANN201
    boot_profile(profiles, make_layer, tmp_path, "p1")
    db = connect(database_url)
    registry = Registry(db)
    registry.register(MAC, "p1")
    registry.register(OTHER_MAC, "p1")
    yield registry, MonitorRecords(db), profiles
    db.close()


def beat(generation: int, *, received: float, profile: str = "p1", **extra: object) -> Heartbeat:
    return Heartbeat.from_json({"uptime": 12.5, "load": [0.1, 0.2, 0.3], "memory": {"total": 1 << 30,
                                "available": 1 << 29}, "profile": profile, "generation": generation,
                                "serial": 7, **extra}, received=received)


def test_heartbeat_round_trips_and_sets_the_good_generation(setup) -> None:  # noqa: ANN001
    registry, records, _ = setup
    node = registry.get(MAC)
    records.record_heartbeat(node, beat(2, received=T0, failed_units=["a.service"],
                                        disks=[{"name": "sda", "health": "failing", "detail": "reallocated"}],
                                        ab={"booted": "B", "wanted": "A", "fallback": True}))
    stored = records.heartbeat(MAC)
    assert stored is not None and stored.load == (0.1, 0.2, 0.3) and stored.mem_available == 1 << 29
    assert stored.failed_units == ("a.service",) and stored.failing_disks[0].detail == "reallocated"
    assert stored.fell_back and stored.received == T0
    assert registry.get(MAC).good_generation == 2 and registry.get(MAC).last_seen is not None
    records.record_heartbeat(registry.get(MAC), beat(9, received=T0 + 1, profile="other"))   # not its profile
    assert registry.get(MAC).good_generation == 2 and records.heartbeat(MAC).generation == 9
    for bad, field in (({"load": [1, 2]}, "'load'"), ({"generation": -1}, "'generation'"),
                       ({"disks": [{"name": "sda", "health": "meh"}]}, "disk"), ({"ab": {"fallback": "yes"}},
                                                                                  "ab.fallback"), ("[]", "object")):
        with pytest.raises(LayerbootError, match=field):
            Heartbeat.from_json(bad, received=T0)


def test_incident_opens_after_its_threshold_once_and_closes_after_damping(setup) -> None:  # noqa: ANN001
    registry, records, _ = setup
    types = types_with(node_down={"after": 60.0, "clear_after": 30.0})
    known = {MAC, OTHER_MAC}
    bad = {(MAC, "node-down"): "no heartbeat for 5 min"}
    assert records.reconcile(bad, types, known, T0).opened == []                  # held 0 s of 60
    assert records.reconcile(bad, types, known, T0 + 59).opened == []
    opened = records.reconcile(bad, types, known, T0 + 60).opened
    assert [(i.mac, i.type, i.state, i.step, i.next_at) for i in opened] == [(MAC, "node-down", "open", 0, T0 + 60)]
    assert records.reconcile(bad, types, known, T0 + 61).opened == []             # at most one open
    with pytest.raises(DatabaseConflict):                                         # ... the index guarantees it
        records.db.execute("INSERT INTO incidents (mac, type, state, opened, updated) VALUES (?, ?, 'open', 0, 0)",
                           (MAC, "node-down"))
    assert records.reconcile({}, types, known, T0 + 70).closed == []               # gone for 0 s of 30
    assert records.reconcile(bad, types, known, T0 + 80).closed == []              # back: the damping restarts
    assert records.reconcile({}, types, known, T0 + 90).closed == []
    assert records.reconcile({}, types, known, T0 + 119).closed == []
    closed = records.reconcile({}, types, known, T0 + 120).closed
    assert [(i.id, i.state, i.closed_by, i.closed) for i in closed] == [(opened[0].id, "closed", "cleared", T0 + 120)]
    kinds = [(h.kind, h.message.split(":")[0]) for h in records.history(opened[0].id)]
    assert kinds == [("opened", "no heartbeat for 5 min"), ("note", "condition gone; closes if it stays gone"),
                     ("note", "condition back"), ("note", "condition gone; closes if it stays gone"),
                     ("closed", "the condition cleared")]
    assert records.list() == [] and [i.id for i in records.list(states=("closed",))] == [opened[0].id]


def test_ladder_steps_tries_backoff_and_flap_escalation(setup) -> None:  # noqa: ANN001
    registry, records, _ = setup
    ladder = (Step("power-cycle", wait=10.0, tries=3, backoff=2.0), Step("notify", wait=5.0), Step("flag"))
    types = types_with(boot_failing={"ladder": ladder, "clear_after": 0.0, "flap_window": 600.0})
    bad = {(MAC, "boot-failing"): "boot failed (hash) in stage layers: ..."}
    incident = records.reconcile(bad, types, {MAC}, T0).opened[0]
    assert [i.id for i in records.due(T0)] == [incident.id]
    incident = records.step_done(incident, ladder[0], 3, action="power-cycle", result="ok", message="m", now=T0)
    assert (incident.step, incident.tries, incident.next_at) == (0, 1, T0 + 10)          # second try in 10 s
    assert records.due(T0 + 9) == []
    incident = records.step_done(incident, ladder[0], 3, action="power-cycle", result="failed", message="m",
                                 now=T0 + 10)
    assert (incident.step, incident.tries, incident.next_at) == (0, 2, T0 + 30)          # back-off: 20 s
    incident = records.step_done(incident, ladder[0], 3, action="power-cycle", result="ok", message="m",
                                 now=T0 + 30)
    assert (incident.step, incident.tries, incident.next_at) == (1, 0, T0 + 40)          # next rung after wait
    incident = records.step_done(incident, ladder[1], 3, action="notify", result="ok", message="m", now=T0 + 40)
    assert records.step_counts() and {(r["action"], r["result"]): r["n"] for r in records.step_counts()} == {
        ("power-cycle", "ok"): 2, ("power-cycle", "failed"): 1, ("notify", "ok"): 1}
    # it clears, and comes back within the flap window: the ladder goes on at the rung it had reached
    records.reconcile({}, types, {MAC}, T0 + 50)
    again = records.reconcile(bad, types, {MAC}, T0 + 60).opened[0]
    assert (again.step, again.reopened) == (2, 1) and again.id != incident.id
    assert "again within the flap window" in records.history(again.id)[0].message
    incident = records.step_done(again, ladder[2], 3, action="flag", result="ok", message="m", flag=True,
                                 now=T0 + 60)
    assert incident.flagged and incident.next_at is None and records.due(T0 + 10_000) == []


def test_pause_resume_close_and_removed_nodes(setup) -> None:  # noqa: ANN001
    registry, records, _ = setup
    types = types_with()
    bad = {(MAC, "node-down"): "down", (OTHER_MAC, "node-down"): "down too"}
    first, second = sorted(records.reconcile(bad, types, {MAC, OTHER_MAC}, T0).opened, key=lambda i: i.mac)
    paused = records.set_state(first.id, "paused")
    assert paused.state == "paused" and records.due(T0 + 1) == [records.get(second.id)]
    with pytest.raises(LayerbootError, match="is paused already"):
        records.set_state(first.id, "paused")
    assert records.set_state(first.id, "open").state == "open"
    assert records.set_state(first.id, "closed").closed_by == "admin"
    with pytest.raises(LayerbootError, match="is closed already"):
        records.set_state(first.id, "open")
    # an admin's close: the condition must hold again for 'after' (0 here: a new incident at the next check)
    reopened = records.reconcile(bad, types, {MAC, OTHER_MAC}, T0 + 2).opened
    assert [i.mac for i in reopened] == [MAC] and reopened[0].step == 0     # not a flap: it starts over
    registry.remove(OTHER_MAC)
    closed = records.reconcile({(MAC, "node-down"): "down"}, types, {MAC}, T0 + 3).closed
    assert [(i.mac, i.closed_by) for i in closed] == [(OTHER_MAC, "node removed")]
    with pytest.raises(LayerbootError, match="no incident 999"):
        records.get(999)


def test_detectors_turn_node_state_into_conditions(setup) -> None:  # noqa: ANN001
    registry, records, profiles = setup
    limits = Limits(heartbeat_timeout=100, stuck_after=300)
    newest = profiles.current("p1").number
    records.record_heartbeat(registry.get(MAC), beat(newest - 1, received=T0, failed_units=["x.service"]))
    node = dataclasses.replace(registry.get(MAC), last_seen="2027-01-15T08:00:00+00:00")   # = T0
    assert node_state(node, records.heartbeat(MAC), limits, T0 + 50) == "up"
    bad = conditions([node], records.heartbeats(), lambda p: newest, limits, T0 + 50)
    assert bad == {(MAC, "stale-generation"): f"runs generation {newest - 1} of p1; the newest is {newest}",
                   (MAC, "units-failed"): "failed units: x.service"}
    assert set(conditions([node], records.heartbeats(), lambda p: newest, limits, T0 + 101)) == {(MAC, "node-down")}
    pinned = dataclasses.replace(node, pinned_generation=newest - 1)
    assert conditions([pinned], records.heartbeats(), lambda p: newest, limits, T0 + 50).keys() == {
        (MAC, "units-failed")}
    registry.record_event(MAC, Event(stage="layers", ok=False, generation=newest,
                                     message="layers: layer 1a2b failed verification: got 10 bytes with sha256 x"))
    failed = registry.get(MAC)
    assert node_state(failed, records.heartbeat(MAC), limits, T0 + 500) == "failed"
    assert conditions([failed], records.heartbeats(), lambda p: newest, limits, T0 + 500) == {
        (MAC, "boot-failing"): "boot failed (hash) in stage layers: layers: layer 1a2b failed verification: got 10 "
                               "bytes with sha256 x"}
    registry.saw_boot(OTHER_MAC)
    other = registry.get(OTHER_MAC)
    seen = __import__("datetime").datetime.fromisoformat(other.last_seen).timestamp()
    assert node_state(other, None, limits, seen + 10) == "booting"
    assert node_state(other, None, limits, seen + 301) == "stuck"
    assert [failure_kind(m) for m in ("manifest: manifest signature does not verify",
                                      "manifest: GET http://10.0.2.2:1/nodes/x/manifest: Connection refused",
                                      "mount: no /sbin/init")] == ["signature", "fetch", "other"]


def test_pinned_generation_is_served_signed_with_a_fresh_serial(setup, store) -> None:  # noqa: ANN001
    registry, records, profiles = setup
    newest = profiles.current("p1")
    node = registry.get(MAC)
    assert boot_generation(node, profiles) == newest
    body, gen, serial = node_manifest(registry, profiles, node)
    assert body == profiles.signed_manifest("p1", newest.number) and serial == newest.serial
    with pytest.raises(LayerbootError, match="has no generation 99"):
        check_pin(profiles, node, 99)
    node = registry.pin(MAC, 1, "test")
    assert (node.pinned_generation, node.pin_reason) == (1, "test")
    body, gen, serial = node_manifest(registry, profiles, node)
    public = load_public_key(store.paths.public_key)
    manifest = verify_manifest(body, public, min_serial=newest.serial + 1)   # a node that took the newest takes it
    assert (manifest.generation, manifest.serial, gen.number) == (1, serial, 1) and serial > newest.serial
    assert [a.digest for a in manifest.layers] == list(profiles.generation("p1", 1).layers)
    assert node_manifest(registry, profiles, registry.get(MAC))[0] == body       # kept: the same bytes again
    repinned = node_manifest(registry, profiles, registry.pin(MAC, 1, "again"))
    assert repinned[2] > serial                                                   # a new pin: a new serial
    assert json.loads(body)["key_id"] == json.loads(profiles.signed_manifest("p1"))["key_id"]
    assert registry.unpin(MAC).pinned_generation is None
    assert node_manifest(registry, profiles, registry.get(MAC))[1] == newest
    registry.pin(MAC, 1)
    assert registry.set_profile(MAC, "p1").pinned_generation is None              # a profile change drops it
