from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.settings import SETTINGS, config_as_toml, load_config, settings_reference


def test_defaults_without_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYERBOOT_CONFIG", raising=False)
    config = load_config(overrides={"store_root": tmp_path})
    assert config.store_root == tmp_path
    assert config.store_compression == "zstd"


def test_toml_values_are_typed_and_override(tmp_path: Path) -> None:
    path = tmp_path / "layerboot.toml"
    path.write_text('[store]\nroot = "/srv/lb"\nblock_size = 65536\n[server]\nport = 9000\n')
    config = load_config(path)
    assert config.store_root == Path("/srv/lb")
    assert config.store_block_size == 65536
    assert config.server_port == 9000


@pytest.mark.parametrize("body, message", [
    ('[store]\nblock_size = "big"\n', "store.block_size: expected an integer"),
    ('[store]\ncolour = "red"\n', "unknown setting 'store.colour'"),
    ('[store]\ncompression = "rar"\n', "store.compression: expected one of"),
    ('[store\n', "not valid TOML"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(LayerbootError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LayerbootError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    path = tmp_path / "layerboot.toml"
    path.write_text('[store]\nroot = "/srv/x"\n[bake]\nmax_files = 7\n[server]\ndebug = true\n')
    config = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(config_as_toml(config))
    assert load_config(again) == config


def test_reference_documents_every_setting() -> None:
    reference = settings_reference()
    for setting in SETTINGS:
        assert f"`{setting.key}`" in reference


def test_docs_config_md_holds_the_generated_reference() -> None:
    from pathlib import Path
    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert settings_reference() in docs.read_text(), "regenerate docs/config.md from 'layerboot config reference'"
