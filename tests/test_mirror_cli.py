"""'layerboot mirror list|publish': which mirrors each profile's signed manifest names, and signing the
configured ones in; stage1 reads them back from the signed envelope, pinned per-node manifests included."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerboot.initrd.stage1.verify import load_public_key, verify_envelope
from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.overlays.profile import Profiles
from layerboot.tools.cli import main


def config(tmp_path: Path, profiles: Profiles, text: str) -> Path:
    path = tmp_path / "layerboot.toml"
    path.write_text(f'[store]\nroot = "{profiles.paths.root}"\n{text}')
    return path


def run_cli(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> str:
    assert main(["--config", str(path), *args]) == 0
    return capsys.readouterr().out


def signed(profiles: Profiles, name: str):  # noqa: ANN201 - stage1's BootManifest
    return verify_envelope(profiles.signed_manifest(name), load_public_key(str(profiles.paths.public_key)),
                           profile=name)


def test_publish_signs_the_configured_mirrors_into_new_generations_only_where_needed(
        profiles: Profiles, make_layer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_layer({"etc/os-release": "x\n"}, kind="base")
    for name in ("web", "db", "lab"):
        profiles.create(name, base)
    path = config(tmp_path, profiles, '[mirrors]\nurls = ["http://10.1.0.2:8080", "http://10.2.0.2:8080"]\n'
                                      '[mirrors.profiles]\nlab = []\ndb = ["http://10.9.0.2"]\n')
    listing = run_cli(capsys, path, "mirror", "list")
    assert "web      1    http://10.1.0.2:8080, http://10.2.0.2:8080 (latency)  none: run 'layerboot mirror " \
           "publish'" in listing
    assert "lab      1    none" in listing and listing.count("same") == 1
    serials = {name: profiles.current(name).serial for name in ("web", "db", "lab")}
    assert run_cli(capsys, path, "mirror", "publish", "--dry-run").count("would sign generation 2") == 2
    assert profiles.current("web").number == 1                     # a dry run changes nothing
    out = run_cli(capsys, path, "mirror", "publish")
    assert "web: generation 2" in out and "db: generation 2" in out and "lab: generation 1 names" in out
    web, db, lab = signed(profiles, "web"), signed(profiles, "db"), signed(profiles, "lab")
    assert web.mirrors == ("http://10.1.0.2:8080", "http://10.2.0.2:8080") and web.mirror_order == "latency"
    assert db.mirrors == ("http://10.9.0.2",) and lab.mirrors == ()
    assert web.serial > max(serials.values()) and profiles.current("web").layers == (base,)
    assert profiles.current("web").action == "mirrors: http://10.1.0.2:8080, http://10.2.0.2:8080 (latency)"
    assert run_cli(capsys, path, "mirror", "list").count("same") == 3
    assert "names the configured mirrors already" in run_cli(capsys, path, "mirror", "publish", "web")


def test_pinned_per_node_manifests_carry_the_mirrors(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    from layerboot.server.db import connect
    from layerboot.server.monitor.pins import node_manifest
    from layerboot.server.nodes import Registry

    base = make_layer({"etc/os-release": "x\n"}, kind="base")
    mirrored = Profiles(profiles.store, mirrors=MirrorPolicy(("http://m1",), "listed"))
    mirrored.create("web", base)
    mirrored.add("web", make_layer({"etc/motd": "2\n"}, base=base))
    registry = Registry(connect(profiles.paths.database))
    registry.register("52:54:00:12:34:56", "web")
    registry.db.execute("UPDATE nodes SET pinned_generation = 1")
    body, gen, serial = node_manifest(registry, mirrored, registry.get("52:54:00:12:34:56"))
    manifest = verify_envelope(body, load_public_key(str(profiles.paths.public_key)), profile="web")
    assert gen.number == 1 and manifest.serial == serial and manifest.mirrors == ("http://m1",)
    assert manifest.mirror_order == "listed"
