"""A/B slots with boot counting: the state model, the real GRUB script (run by grub-emu on the loop disk),
updates into the inactive slot, fallback after failed boots, mark-good, and interrupted slot writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from abdisk import big_generation, bootable_profile, grub_boot, kill_writer_mid_copy, loop_disk
from layerboot.build import ab, bootloader
from layerboot.build.ab import AbState, SlotState, choose_target, pick_slot
from layerboot.build.disk_actions import DiskContext, execute
from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.run import run


# -- the state model (no disk) ---------------------------------------------------------------------------
def test_state_survives_the_grub_environment_block() -> None:
    state = AbState(order=("B", "A"), slots={"A": SlotState("good", 0), "B": SlotState("trial", 2)}, booted="B")
    block = bootloader.format_env(state.to_env())
    assert len(block) == 1024 and block.startswith(b"# GRUB Environment Block\n")
    assert AbState.from_env(bootloader.parse_env(block)) == state
    with pytest.raises(LayerbootError, match="not a 1024-byte GRUB environment block"):
        bootloader.parse_env(block[:1000])
    with pytest.raises(LayerbootError, match="characters GRUB would escape"):
        bootloader.format_env({"lb_x": "a\nb"})


def test_a_trial_slot_gets_n_boots_then_the_other_slot_boots() -> None:
    state = AbState(order=("B", "A"), slots={"A": SlotState("good"), "B": SlotState("trial", 3)})
    picks = []
    for _ in range(5):
        slot, state = pick_slot(state)
        picks.append(slot)
    assert picks == ["B", "B", "B", "A", "A"]
    assert state.slots["B"] == SlotState("bad", 0) and state.booted == "A"


def test_a_good_slot_boots_forever_and_nothing_bootable_is_said() -> None:
    state = AbState(order=("A", "B"), slots={"A": SlotState("good"), "B": SlotState("empty")})
    assert pick_slot(pick_slot(state)[1])[0] == "A"
    dead = AbState(slots={"A": SlotState("trial", 1), "B": SlotState("bad")})
    first, dead = pick_slot(dead)
    assert first == "A"
    assert pick_slot(dead)[0] is None


def test_updates_never_go_to_the_running_or_the_only_good_slot() -> None:
    a_good = AbState(slots={"A": SlotState("good"), "B": SlotState("trial", 2)})
    assert choose_target(a_good, None) == "B"           # replace the unconfirmed trial, keep the good one
    assert choose_target(a_good, "A") == "B"
    with pytest.raises(LayerbootError, match="only confirmed slot"):
        choose_target(a_good, "B")                      # running B unconfirmed: overwriting A would leave nothing
    both = AbState(order=("B", "A"), slots={"A": SlotState("good"), "B": SlotState("good")})
    assert choose_target(both, None) == "A" and choose_target(both, "A") == "B"
    assert choose_target(AbState(), None) == "A"


# -- on a loop disk --------------------------------------------------------------------------------------
@pytest.fixture
def public(profiles) -> bytes:
    return load_public_key(profiles.paths.public_key)


def _install(disk: str, profiles, public: bytes, tmp_path: Path, slot_mib: int = 64) -> ab.AbDisk:
    source = ab.source_from_store(profiles, "node", None, public)
    execute(ab.plan_install(disk, source, public, slot_mib=slot_mib), DiskContext(disk, workdir=tmp_path),
            report=lambda line: None)
    return ab.AbDisk(disk, workdir=tmp_path)


def _grub_boot_checked(disk: ab.AbDisk) -> str:
    """Boot once with the real GRUB and check it did exactly what the Python model predicts."""
    expected_slot, expected = pick_slot(disk.state())
    slot, seen = grub_boot(disk.disk)
    assert (slot or None) == expected_slot
    assert seen == {s: f"{expected.slots[s].state}/{expected.slots[s].tries}" for s in bootloader.SLOTS}
    assert disk.state() == expected               # GRUB's save_env wrote the block back to the ESP
    return slot


@pytest.mark.root
def test_install_update_fallback_and_mark_good(profiles, make_layer, public, tmp_path: Path) -> None:
    base = bootable_profile(profiles, make_layer, tmp_path)
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, public, tmp_path)
        uuids = disk.layout().slot_uuids
        assert _grub_boot_checked(disk) == "A"
        assert disk.booted_slot(f"console=ttyS0 layerboot.slot=UUID={uuids['A']}") == "A"
        disk.mark_good("A")

        # generation 2 goes into the inactive slot B, which boots next on trial
        profiles.add("node", make_layer({"etc/motd": "v2\n"}, base=base))
        source2 = ab.source_from_store(profiles, "node", None, public)
        assert disk.update(source2, public, tries=3) == "B"
        record = disk.verify_slot("B", public)
        assert (record.generation, disk.verify_slot("A", public).generation) == (2, 1)
        entry = run(["debugfs", "-R", "cat /boot/grub-entry.cfg", disk.slot_device("B")]).text
        # Failing slots reboot by default (so GRUB's tries run out); the profile's own options come last and win.
        assert (f"'layerboot.slot=UUID={uuids['B']}' 'layerboot.profile=node' 'panic=10' 'layerboot.emergency=reboot' "
                "'console=ttyS0'") in entry

        # the new system never confirms: three attempts, then GRUB itself falls back to A and marks B bad
        assert [_grub_boot_checked(disk) for _ in range(4)] == ["B", "B", "B", "A"]
        assert disk.state().slots["B"].state == "bad"
        with pytest.raises(LayerbootError, match="slot B is bad, not on trial"):
            disk.mark_good("B")

        # a fixed generation 3 goes into B again (A is the only good slot); this time it is confirmed
        profiles.add("node", make_layer({"etc/motd": "v3\n"}, base=base))
        assert disk.update(ab.source_from_store(profiles, "node", None, public), public) == "B"
        assert _grub_boot_checked(disk) == "B"
        with pytest.raises(LayerbootError, match="only confirmed slot"):
            choose_target(disk.state(), "B")            # no update while B runs unconfirmed
        disk.mark_good("B")
        assert [_grub_boot_checked(disk) for _ in range(2)] == ["B", "B"]
        assert disk.state().slots == {"A": SlotState("good"), "B": SlotState("good")}
        assert choose_target(disk.state(), "B") == "A"  # the next update replaces the older slot

        # an operator rolls back to generation 1 by hand; GRUB follows
        disk.switch("A")
        assert _grub_boot_checked(disk) == "A" and disk.verify_slot("A", public).generation == 1
        disk.save_state(disk.state().with_slot("B", "bad"))
        with pytest.raises(LayerbootError, match="slot B is bad; only a good slot can be chosen by hand"):
            disk.switch("B")


@pytest.mark.root
def test_a_state_replacement_cut_before_its_rename_still_boots(profiles, make_layer, public,
                                                               tmp_path: Path) -> None:
    bootable_profile(profiles, make_layer, tmp_path)
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, public, tmp_path)
        env = f"::/{bootloader.ENV_PATH}"
        # the moment inside Esp.write after the old block was deleted and before the new one was renamed
        run(["mren", "-i", disk.esp.device, env, env + ".new"], env=bootloader.MTOOLS_ENV)
        assert not disk.esp.exists(bootloader.ENV_PATH)
        assert disk.state().slots["A"] == SlotState("trial", ab.DEFAULT_TRIES)
        assert _grub_boot_checked(disk) == "A"           # GRUB reads and counts in the .new block
        disk.mark_good("A")                              # the next write completes the replacement
        assert disk.esp.exists(bootloader.ENV_PATH) and not disk.esp.exists(bootloader.ENV_PATH + ".new")
        assert _grub_boot_checked(disk) == "A" and disk.state().slots["A"] == SlotState("good")


@pytest.mark.root
def test_mark_good_and_status_cli(profiles, make_layer, public, tmp_path: Path, capsys) -> None:
    from layerboot.tools.cli import main
    bootable_profile(profiles, make_layer, tmp_path)
    store = str(profiles.paths.root)
    with loop_disk(tmp_path) as device:
        assert main(["--store", store, "ab", "status", "--disk", device]) == 1
        assert f"error: {device} has no layerboot A/B layout" in capsys.readouterr().err
        assert main(["--store", store, "install", "--disk", device, "--profile", "node", "--slot-size", "64M",
                     "--tries", "2"]) == 0
        assert "installed node generation 1 in slot A (2 boot attempts" in capsys.readouterr().out
        assert main(["--store", store, "ab", "status", "--disk", device, "--verify",
                     "--key", str(profiles.paths.public_key)]) == 0
        out = capsys.readouterr().out
        assert "A     trial  2" in out and "node gen 1 serial 1  verified" in out and "next boot: A" in out
        assert main(["--store", store, "mark-good", "--disk", device]) == 1   # not booted from it: says so
        assert "cannot tell which slot" in capsys.readouterr().err
        assert main(["--store", store, "mark-good", "--disk", device, "--slot", "A"]) == 0
        assert "slot A is good" in capsys.readouterr().out
        assert main(["--store", store, "ab", "switch", "B", "--disk", device]) == 1
        assert "slot B is empty; only a good slot can be chosen by hand" in capsys.readouterr().err
        assert ab.AbDisk(device).state().slots["A"] == SlotState("good")


@pytest.mark.root
def test_writer_killed_mid_copy_leaves_the_old_slot_booting(profiles, make_layer, public, tmp_path: Path) -> None:
    base = bootable_profile(profiles, make_layer, tmp_path)
    with loop_disk(tmp_path, size_mib=480) as device:
        disk = _install(device, profiles, public, tmp_path, slot_mib=192)
        disk.boot_attempt()
        disk.mark_good("A")
        big_generation(profiles, base, tmp_path, 120)
        kill_writer_mid_copy(profiles, device, tmp_path)
        with disk.mounted("B", writable=False) as root:
            written = sum(p.stat().st_size for p in (root / "layers").iterdir())
        assert 0 < written < 120 << 20               # the copy had begun and had not finished
        state = disk.state()
        assert state.slots["A"] == SlotState("good") and state.slots["B"].state == "empty"
        with pytest.raises(LayerbootError, match="slot B is incomplete"):
            disk.verify_slot("B", public)
        assert _grub_boot_checked(disk) == "A"

        # the next attempt completes and switches
        assert disk.update(ab.source_from_store(profiles, "node", None, public), public) == "B"
        assert disk.verify_slot("B", public).generation == 2


@pytest.mark.root
def test_a_truncated_slot_is_refused_and_never_activated(profiles, make_layer, public, tmp_path: Path) -> None:
    base = bootable_profile(profiles, make_layer, tmp_path)
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, public, tmp_path)
        disk.mark_good("A")
        profiles.add("node", make_layer({"etc/motd": "v2\n", "usr/share/doc/x": "x" * 50000}, base=base))
        source = ab.source_from_store(profiles, "node", None, public)
        disk.write_slot("B", source)
        layer = source.manifest.layers[-1].digest
        with disk.mounted("B", writable=True) as root:
            path = root / "layers" / layer
            os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(LayerbootError, match=f"slot B: layers/{layer} is missing or does not match"):
            disk.verify_slot("B", public)
        assert disk.state().slots["B"].state == "empty" and pick_slot(disk.state())[0] == "A"


@pytest.mark.root
def test_a_slot_holds_each_layers_tree_checked_and_a_lost_tree_is_made_again(profiles, make_layer, public,
                                                                             tmp_path: Path) -> None:
    """Each layer's dm-verity tree goes next to it (stage1 attaches the layer through dm-verity with it); a tree
    the store lost is made again, byte for byte the one the signed manifest names; an altered tree in the slot
    fails the slot's verification like an altered layer."""
    base = bootable_profile(profiles, make_layer, tmp_path)
    profiles.add("node", make_layer({"etc/motd": os.urandom(30000).hex()}, base=base))
    store = profiles.store
    manifest = ab.source_from_store(profiles, "node", None, public).manifest
    layer = manifest.layers[-1]
    assert layer.verity is not None and layer.verity.tree_size > 0
    store.path(layer.verity.tree).unlink()                   # lost (e.g. 'store fsck --repair' of a damaged one)
    source = ab.source_from_store(profiles, "node", None, public)
    rel = f"layers/{layer.digest}.verity"
    assert source.files[rel] == store.path(layer.verity.tree) and source.files[rel].is_file()
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, public, tmp_path)
        with disk.mounted("A", writable=True) as root:
            for item in manifest.layers:
                tree = root / "layers" / f"{item.digest}.verity"
                assert run(["sha256sum", tree]).text.split()[0] == item.verity.tree
            with open(root / rel, "r+b") as f:
                f.write(b"\xff")
        with pytest.raises(LayerbootError, match=f"slot A: {rel} is missing or does not match the signed manifest"):
            disk.verify_slot("A", public)


@pytest.mark.root
@pytest.mark.parametrize(("mib", "message"), [(48, r"needs \d+ MiB, slot B holds 40 MiB"),
                                              (37, r"needs \d+ MiB, slot B has \d+ MiB free after formatting")])
def test_a_slot_larger_than_the_partition_is_refused_before_copying(profiles, make_layer, public, tmp_path: Path,
                                                                    mib: int, message: str) -> None:
    base = bootable_profile(profiles, make_layer, tmp_path)
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, public, tmp_path, slot_mib=40)
        disk.mark_good("A")
        big_generation(profiles, base, tmp_path, mib)
        with pytest.raises(LayerbootError, match=message):
            disk.update(ab.source_from_store(profiles, "node", None, public), public)
        assert disk.state().slots == {"A": SlotState("good"), "B": SlotState("empty")}
        assert disk.verify_slot("A", public).generation == 1


@pytest.mark.root
def test_a_node_updates_its_own_disk_from_the_server_fetching_only_the_new_layer(
        profiles, make_layer, public, tmp_path: Path, capsys) -> None:
    from server_daemon import MAC, Daemon, write_config

    from layerboot.overlays.keys import generate_key
    from layerboot.tools.cli import main
    base = bootable_profile(profiles, make_layer, tmp_path)
    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                    tmp_path / "layerbootd.log")
    _, token = daemon.registry().register(MAC, "node")
    (tmp_path / "token").write_text(token + "\n")
    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    store = str(profiles.paths.root)
    with loop_disk(tmp_path) as device:
        disk = _install(device, profiles, public, tmp_path)
        disk.mark_good("A")
        # incompressible: a layer of several blocks, so it has a dm-verity tree of its own (a one-block layer's is
        # empty, the same object for every such layer)
        new_layer = make_layer({"etc/motd": os.urandom(30000).hex()}, base=base)
        profiles.add("node", new_layer)
        update = ["--store", store, "ab", "update", "--disk", device, "--server", daemon.url, "--node", MAC,
                  "--token-file", str(tmp_path / "token")]
        daemon.start()
        try:
            assert main([*update, "--key", str(tmp_path / "other.pub")]) == 1      # not the key it trusts
            assert "not the trusted key" in capsys.readouterr().err
            assert disk.state().slots["B"].state == "empty"
            assert main(update) == 0
            out = capsys.readouterr().out
            with loop_disk(tmp_path, name="fresh.img") as fresh:      # a netbooted node installing itself
                install = ["--store", store, "install", "--disk", fresh, "--server", daemon.url, "--node", MAC,
                           "--secret-file", str(tmp_path / "token"), "--slot-size", "64M"]
                assert main(install) == 1     # an empty disk: which profile it should hold must be said
                assert "give --profile NAME: a manifest of another profile is refused" in capsys.readouterr().err
                assert main([*install, "--profile", "web"]) == 1
                assert "the signed manifest is for profile node, not web" in capsys.readouterr().err
                assert main([*install, "--profile", "node"]) == 0
                installed = capsys.readouterr().out
                # two layers, their trees (the base's is empty), kernel and initrd
                assert "fetched 6 object(s)" in installed and "reused 0 from the disk" in installed
                assert "installed node generation 2 in slot A" in installed
                assert ab.AbDisk(fresh, workdir=tmp_path).verify_slot("A", public).generation == 2
        finally:
            daemon.stop()
        layer = profiles.store.get(new_layer)
        assert layer.verity is not None and layer.verity.tree_size > 0
        size = layer.size + layer.verity.tree_size
        assert f"fetched 2 object(s), {size} bytes; reused 4 from the disk" in out      # the layer and its tree
        assert "slot B holds node generation 2; it boots next" in out
        assert disk.verify_slot("B", public).generation == 2
        assert disk.state().order == ("B", "A")

        # a replayed older manifest (the server's store rolled back by hand) is refused; nothing is written
        disk.mark_good("B")
        manifests = profiles.paths.manifest_dir("node")
        (manifests / "2.json").write_bytes((manifests / "1.json").read_bytes())
        daemon.start()
        try:
            assert main(update) == 1
        finally:
            daemon.stop()
        assert "manifest serial 1 is lower than the last accepted 2" in capsys.readouterr().err
        assert disk.state().slots == {"A": SlotState("good"), "B": SlotState("good")}
