from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.overlays.profile import Generation, Profiles
from layerboot.tools.cli import main


@pytest.fixture
def chain(profiles: Profiles, make_layer):
    base = make_layer({"etc/issue": "base\n"}, kind="base")
    one = make_layer({"etc/one": "1\n"}, base=base, description="one")
    two = make_layer({"etc/two": "2\n"}, base=base, description="two")
    return base, one, two


def manifest_of(profiles: Profiles, name: str, number: int | None = None):
    return verify_manifest(profiles.signed_manifest(name, number), load_public_key(profiles.paths.public_key))


def test_generations_are_numbered_and_immutable(profiles: Profiles, chain) -> None:
    base, one, two = chain
    g1 = profiles.create("web", base)
    first_file = profiles.paths.profile_dir("web") / "1.json"
    first_bytes = first_file.read_bytes()
    g2 = profiles.add("web", one)
    g3 = profiles.add("web", two)
    assert [g.number for g in profiles.history("web")] == [1, 2, 3]
    assert g3.layers == (base, one, two)
    assert g1.serial < g2.serial < g3.serial
    assert first_file.read_bytes() == first_bytes, "an old generation is never rewritten"


def test_manifest_lists_layers_base_first_with_sizes(profiles: Profiles, chain) -> None:
    base, one, two = chain
    profiles.create("web", base, cmdline="console=ttyS0 quiet")
    profiles.add("web", one)
    profiles.add("web", two)
    manifest = manifest_of(profiles, "web")
    assert [a.digest for a in manifest.layers] == [base, one, two]
    assert [a.size for a in manifest.layers] == [profiles.store.get(d).size for d in (base, one, two)]
    assert manifest.cmdline == "console=ttyS0 quiet" and manifest.generation == 3


def test_remove_and_move(profiles: Profiles, chain) -> None:
    base, one, two = chain
    profiles.create("web", base)
    profiles.add("web", one)
    profiles.add("web", two)
    assert profiles.move("web", two, 1).layers == (base, two, one)
    assert profiles.remove("web", one[:10]).layers == (base, two)
    with pytest.raises(LayerbootError, match="base layer cannot be removed"):
        profiles.remove("web", base)
    with pytest.raises(LayerbootError, match="position must be between 1"):
        profiles.add("web", one, position=0)


def test_rollback_makes_a_new_generation_with_a_higher_serial(profiles: Profiles, chain) -> None:
    base, one, two = chain
    profiles.create("web", base)
    profiles.add("web", one)
    g3 = profiles.add("web", two)
    rolled = profiles.rollback("web", 2)
    assert rolled.number == 4 and rolled.layers == (base, one)
    assert rolled.serial > g3.serial
    assert manifest_of(profiles, "web").serial == rolled.serial
    assert manifest_of(profiles, "web", 2).layers == manifest_of(profiles, "web").layers
    with pytest.raises(LayerbootError, match="has no generation 9"):
        profiles.rollback("web", 9)


def test_serial_is_store_wide(profiles: Profiles, chain) -> None:
    base, one, _ = chain
    a = profiles.create("a", base)
    b = profiles.create("b", base)
    c = profiles.add("a", one)
    assert (a.serial, b.serial, c.serial) == (1, 2, 3)


def test_base_mismatch_is_refused_unless_forced(profiles: Profiles, make_layer, chain) -> None:
    base, one, _ = chain
    other_base = make_layer({"etc/issue": "other\n"}, kind="base")
    foreign = make_layer({"etc/x": "x"}, base=other_base)
    profiles.create("web", base)
    with pytest.raises(LayerbootError, match="was made on base"):
        profiles.add("web", foreign)
    assert profiles.current("web").number == 1, "a refused change writes no generation"
    assert profiles.add("web", foreign, force=True).layers == (base, foreign)


def test_cherry_pick_from_another_profile(profiles: Profiles, chain, make_layer) -> None:
    base, one, two = chain
    unused = make_layer({"etc/unused": "u"}, base=base)
    profiles.create("web", base)
    profiles.add("web", one)
    profiles.add("web", two)
    profiles.create("db", base)
    picked = profiles.cherry_pick("db", "web", two)
    assert picked.layers == (base, two)
    assert "add" in picked.action
    with pytest.raises(LayerbootError, match="not in web"):
        profiles.cherry_pick("db", "web", unused)
    with pytest.raises(LayerbootError, match="base of web"):
        profiles.cherry_pick("db", "web", base)


def test_diff_between_generations(profiles: Profiles, chain) -> None:
    base, one, two = chain
    profiles.create("web", base)
    profiles.add("web", one)
    profiles.add("web", two)
    profiles.move("web", two, 1)
    diff = profiles.diff("web", 2, 4)
    assert diff.added == (two,) and diff.removed == () and not diff.reordered
    assert profiles.diff("web", 3, 4).reordered
    assert profiles.diff("web", 3, 3).empty


def test_generation_record_round_trips() -> None:
    gen = Generation(profile="web", number=3, layers=("a" * 64, "b" * 64), action="add", serial=7,
                     cmdline="quiet", kernel="c" * 64, modules="d" * 64)
    assert Generation.from_json(gen.to_json()) == gen
    old = gen.to_json().replace(f'  "modules": "{"d" * 64}",\n', "")   # records written before the field
    assert "modules" not in old and Generation.from_json(old).modules is None


def test_modules_layer_stacks_above_the_base_and_follows_rollback(profiles: Profiles, chain, store,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    base, one, _ = chain
    tree = tmp_path / "mods" / "lib" / "modules" / "6.1.0-9-amd64"
    tree.mkdir(parents=True)
    (tree / "modules.dep").write_text("")
    modules = store.import_tree(tmp_path / "mods", kind="modules", all_root=True).digest
    profiles.create("web", base)
    profiles.add("web", one)
    gen = profiles.set_boot("web", modules=modules)
    assert gen.layers == (base, one) and gen.chain == (base, modules, one)
    assert [a.digest for a in manifest_of(profiles, "web").layers] == [base, modules, one]
    with pytest.raises(LayerbootError, match="kernel modules layer; it goes with the kernel"):
        profiles.add("web", modules)
    assert profiles.diff("web", 2, 3).changes == (f"modules: - -> {modules}",)
    profiles.rollback("web", 2)                       # generation 2 had no modules layer
    assert profiles.current("web").modules is None
    profiles.rollback("web", 3)
    assert profiles.current("web").modules == modules
    gen = profiles.set_boot("web", modules="")        # dropped
    assert gen.modules is None and [a.digest for a in manifest_of(profiles, "web").layers] == [base, one]


def test_profile_without_a_signing_key_is_a_clear_error(profiles: Profiles, chain) -> None:
    profiles.paths.signing_key.unlink()
    with pytest.raises(LayerbootError, match="no signing key"):
        profiles.create("web", chain[0])
    assert profiles.names() == []


def test_cli_compose_log_and_diff(profiles: Profiles, chain, capsys) -> None:
    base, one, two = chain
    s = ["--store", str(profiles.paths.root)]
    assert main([*s, "profile", "create", "web", "--base", base[:12]]) == 0
    assert main([*s, "profile", "add", "web", one[:12]]) == 0
    assert main([*s, "profile", "add", "web", two[:12]]) == 0
    assert main([*s, "profile", "rollback", "web", "2"]) == 0
    capsys.readouterr()
    assert main([*s, "profile", "log", "web"]) == 0
    log = capsys.readouterr().out
    assert "rollback to generation 2" in log and log.index("rollback") < log.index("create")
    assert main([*s, "profile", "diff", "web", "3", "4"]) == 0
    assert f"- {two[:12]} two" in capsys.readouterr().out
    assert main([*s, "profile", "show", "web", "--generation", "7"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[0] == "layerboot: error: profile web has no generation 7 (it has 1-4)"


def test_invalid_profile_names_never_reach_the_filesystem(profiles: Profiles, chain, tmp_path: Path) -> None:
    for name in ("../evil", "a/b", "", "UPPER", ".hidden"):
        with pytest.raises(LayerbootError, match="invalid profile name"):
            profiles.create(name, chain[0])
    assert not (profiles.paths.root.parent / "evil").exists()
