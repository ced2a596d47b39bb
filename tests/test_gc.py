"""Deleting: 'profile delete', 'layer remove' (refused while referenced) and 'store gc' with its retention policy."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.server.db import connect
from layerboot.server.nodes import Event, Registry
from layerboot.tools.cli import main

MAC, OTHER = "52:54:00:12:34:56", "52:54:00:ab:cd:ef"


def _ago(days: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).replace(microsecond=0).isoformat()


def age_generation(profiles: Profiles, name: str, number: int, days: float) -> None:
    """Pretend a generation was made ``days`` ago (its record's 'created')."""
    path = profiles.paths.profile_dir(name) / f"{number}.json"
    data = json.loads(path.read_text())
    data["created"] = _ago(days)
    path.chmod(0o644)
    path.write_text(json.dumps(data))


def age_layer(profiles: Profiles, digest: str, days: float) -> None:
    path = profiles.paths.object_meta(digest)
    data = json.loads(path.read_text())
    data["created"] = _ago(days)
    path.write_text(json.dumps(data))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "layerbootd.sqlite" not in p.name}


@pytest.fixture
def history(profiles: Profiles, make_layer):
    """Profile web with 8 generations (all 60 days old but the last two), layers l1..l4 coming and going."""
    base = make_layer({"etc/os-release": "base\n"}, kind="base", description="base")
    l1, l2, l3, l4 = (make_layer({f"etc/l{i}": f"{i}\n"}, base=base, description=f"l{i}") for i in range(1, 5))
    profiles.create("web", base)                 # 1: base
    profiles.add("web", l1)                      # 2: base l1
    profiles.add("web", l2)                      # 3: base l1 l2
    profiles.remove("web", l1)                   # 4: base l2
    profiles.remove("web", l2)                   # 5: base
    profiles.add("web", l4)                      # 6: base l4
    profiles.remove("web", l4)                   # 7: base
    profiles.add("web", l3)                      # 8: base l3
    for number in range(1, 7):
        age_generation(profiles, "web", number, 60)
    for digest in (base, l1, l2, l3, l4):
        age_layer(profiles, digest, 60)
    return {"base": base, "l1": l1, "l2": l2, "l3": l3, "l4": l4}


def cli(profiles: Profiles, *argv: str) -> int:
    return main(["--store", str(profiles.paths.root), *argv])


def test_layer_remove_is_refused_while_anything_references_it(profiles: Profiles, history, make_layer,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(profiles, "layer", "remove", history["l1"][:10]) == 1
    err = capsys.readouterr().err
    assert f"layer {history['l1'][:12]} is still used by profile web generations 2-3" in err
    assert "layerboot: hint:" in err and "store gc" in err
    assert cli(profiles, "layer", "remove", history["base"][:10]) == 1
    err = capsys.readouterr().err
    assert "profile web generations 1-8" in err and "the base of layers" in err
    loose = make_layer({"etc/loose": "x\n"}, base=history["base"])
    assert cli(profiles, "layer", "remove", loose[:10]) == 0
    assert f"removed overlay layer {loose}" in capsys.readouterr().out
    assert not profiles.store.objects.exists(loose) and not profiles.paths.object_meta(loose).exists()
    assert cli(profiles, "layer", "remove", loose[:10]) == 1
    assert "no layer matches" in capsys.readouterr().err
    assert cli(profiles, "store", "fsck") == 0


def test_gc_keeps_recent_booted_and_current_and_deletes_the_rest(profiles: Profiles, history, make_layer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(connect(profiles.paths.database))
    registry.register(MAC, "web")
    registry.register(OTHER, "web")
    serial_of = {g.number: g.serial for g in profiles.history("web")}
    registry.record_event(MAC, Event(stage="switch-root", ok=True, generation=3, serial=serial_of[3]))
    registry.record_event(OTHER, Event(stage="switch-root", ok=True, generation=2, serial=serial_of[2]))
    registry.db.execute("UPDATE events SET time = ? WHERE mac = ?", (_ago(40), OTHER))   # outside 30 days
    registry.db.execute("UPDATE nodes SET last_seen = ? WHERE mac = ?", (_ago(40), OTHER))
    old_loose = make_layer({"etc/old": "x\n"}, base=history["base"])
    age_layer(profiles, old_loose, 30)
    fresh_loose = make_layer({"etc/fresh": "x\n"}, base=history["base"])
    before = snapshot(profiles.paths.root)

    assert cli(profiles, "store", "gc", "--keep", "2", "--days", "7", "--booted-days", "30") == 0
    out = capsys.readouterr().out
    assert snapshot(profiles.paths.root) == before, "a dry run changes nothing"
    assert "would delete generation 1 of web" in out and "would delete generation 4 of web" in out
    assert "generation 3 of web" not in out and "kept web generation(s) 3: booted within 30 days" in out
    assert f"would delete overlay layer {old_loose[:12]}" in out and fresh_loose[:12] not in out
    assert f"would delete overlay layer {history['l4'][:12]}" in out     # only generation 6 named it
    assert history["l1"][:12] not in out and history["l2"][:12] not in out   # generation 3 (booted) names them
    assert "run 'layerboot store gc --delete'" in out

    assert cli(profiles, "store", "gc", "--keep", "2", "--days", "7", "--delete", "--json") == 0
    report = json.loads(capsys.readouterr().out)["deleted"]
    assert sorted(g["generation"] for g in report["generations"]) == [1, 2, 4, 5, 6]
    assert {layer["digest"] for layer in report["layers"]} == {history["l4"], old_loose}
    assert profiles.numbers("web") == [3, 7, 8]
    assert not profiles.manifest_path("web", 2).exists() and profiles.manifest_path("web", 3).exists()
    assert not profiles.store.objects.exists(history["l4"]) and profiles.store.objects.exists(history["l1"])
    assert profiles.store.objects.exists(fresh_loose)
    assert cli(profiles, "store", "fsck") == 0
    capsys.readouterr()
    assert cli(profiles, "profile", "rollback", "web", "2") == 1
    assert "profile web has no generation 2 (it has 3, 7-8)" in capsys.readouterr().err
    assert cli(profiles, "profile", "rollback", "web", "3") == 0        # the booted generation still works
    assert profiles.current("web").layers == (history["base"], history["l1"], history["l2"])
    assert cli(profiles, "store", "gc", "--keep", "2", "--days", "7") == 0
    assert "nothing to delete" in capsys.readouterr().out


def test_held_uploads_keep_their_layer(profiles: Profiles, history, make_layer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from layerboot.server.uploads import UploadRecords
    held = make_layer({"etc/held": "x\n"}, base=history["base"])
    age_layer(profiles, held, 30)
    Registry(connect(profiles.paths.database)).register(MAC, "web")
    records = UploadRecords(connect(profiles.paths.database), profiles.paths)
    upload = records.begin(MAC, "web", "change.tar.zst", via="http")
    records.db.execute("UPDATE uploads SET state = 'baked', layer = ? WHERE id = ?", (held, upload.id))
    assert cli(profiles, "layer", "remove", held) == 1
    assert "an upload waiting for approval" in capsys.readouterr().err
    assert cli(profiles, "store", "gc", "--keep", "1", "--days", "0", "--booted-days", "0", "--delete") == 0
    assert held[:12] not in capsys.readouterr().out and profiles.store.objects.exists(held)


def test_profile_delete_is_refused_while_nodes_boot_it(profiles: Profiles, history,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    profiles.create("db", history["base"])
    registry = Registry(connect(profiles.paths.database))
    registry.register(MAC, "web")
    assert cli(profiles, "profile", "delete", "web") == 1
    err = capsys.readouterr().err
    assert f"profile web is booted by 1 registered node(s): {MAC}" in err and "nodes set-profile" in err
    registry.set_profile(MAC, "db")
    assert cli(profiles, "profile", "delete", "web") == 0
    assert "deleted profile web (8 generation(s))" in capsys.readouterr().out
    assert profiles.names() == ["db"] and not profiles.paths.manifest_dir("web").exists()
    assert cli(profiles, "profile", "show", "web") == 1
    assert "no profile named 'web'" in capsys.readouterr().err
    # its layers wait for gc: everything but the base (db uses it) goes
    assert cli(profiles, "store", "gc", "--keep", "1", "--days", "7", "--delete") == 0
    assert [layer.digest for layer in profiles.store.layers()] == [history["base"]]
