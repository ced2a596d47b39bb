"""The distribution and the command line as a user meets them."""

import shutil
import tomllib
import zipfile
from pathlib import Path

import pytest

from layerboot.build.package_files import PACKAGES, copy_package
from layerboot.run import run
from layerboot.tools.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.root
def test_wheel_installs_only_the_layerboot_package(tmp_path: Path) -> None:
    source = tmp_path / "src"   # build from a copy: setuptools writes build/lib, which is our build/ room
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "lib"))
    run(["python3", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         source], timeout=300)
    wheel = next((tmp_path / "dist").glob("layerboot-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"layerboot", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for room in ("overlays", "server", "server/db", "server/db/migrations", "tools", "build", "initrd",
                 "initrd/stage1"):
        assert f"layerboot/{room}/__init__.py" in names
    assert "layerboot/server/db/migrations/m0001_initial.py" in names   # found at run time by their names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "layerboot = layerboot.tools.cli:main" in entry_points
    assert "layerbootd = layerboot.server.main:main" in entry_points


def _subcommands(parser) -> list[list[str]]:
    found = []
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                found.append([name])
                found += [[name, *rest] for rest in _subcommands(sub)]
    return found


def test_every_command_has_help(capsys) -> None:
    commands = _subcommands(build_parser())
    assert ["profile", "rollback"] in commands and ["store", "fsck"] in commands
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        assert "usage: layerboot" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["--store", str(tmp_path / "none"), "layer", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"layerboot: error: no layer store at {tmp_path / 'none'}")
    assert "hint: create one with 'layerboot store init'" in err and "Traceback" not in err


@pytest.mark.root
def test_demo_runs_the_main_job(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--store-only", "--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "signature verified: serial 3, 3 layers" in out
    assert "'hello from layer 2' (layer 2 shadows layer 1)" in out
    assert "/etc/issue -> gone (whiteout)" in out


def test_node_images_get_every_package_of_the_distribution(tmp_path: Path) -> None:
    """The client layer and the debootstrap base copy layerboot by PACKAGES: it must match pyproject's list."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert sorted(PACKAGES) == sorted(pyproject["tool"]["setuptools"]["packages"])
    copy_package(tmp_path)
    assert (tmp_path / "layerboot/overlays/capture.py").is_file()
    assert (tmp_path / "layerboot/initrd/stage1/main.py").is_file()
    assert not (tmp_path / "overlays").exists()
