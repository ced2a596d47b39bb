"""The command-line conventions, checked on the whole parser tree so commands added later are held to them too."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from layerboot.run import run, tool_path
from layerboot.server.main import build_parser as daemon_parser
from layerboot.tools.cli import build_parser, main
from layerboot.tools.parser import LISTING_NAMES, subparsers, walk

GLOBALS = ("--config", "--store", "--verbose", "--debug", "--progress")


def _commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(path, parser) for path, parser in walk(build_parser()) if path]


def _runs_something(parser: argparse.ArgumentParser) -> bool:
    return parser.get_default("func") is not None


def _is_listing(path: tuple[str, ...], parser: argparse.ArgumentParser) -> bool:
    """A command that lists or shows records: named list/show/status/log, or a group whose default is a list."""
    func = parser.get_default("func")
    return path[-1] in LISTING_NAMES or (func is not None and "list" in getattr(func, "__name__", ""))


def test_every_list_and_show_command_takes_json() -> None:
    listing = [" ".join(path) for path, parser in _commands() if _is_listing(path, parser)]
    assert {"layer list", "profile show", "nodes", "nodes list", "uploads", "store gc"} & set(listing) >= \
        {"layer list", "profile show", "nodes", "nodes list", "uploads"}
    missing = [" ".join(path) for path, parser in _commands()
               if _is_listing(path, parser) and not any("--json" in a.option_strings for a in parser._actions)]
    assert missing == []


def test_every_argument_has_help_and_every_command_examples() -> None:
    no_help = []
    no_examples = []
    for path, parser in [((), build_parser()), *_commands(), (("layerbootd",), daemon_parser())]:
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction) and (not action.help or action.help == argparse.SUPPRESS):
                no_help.append(f"{' '.join(path)}: {'/'.join(action.option_strings) or action.dest}")
        if _runs_something(parser) or not list(subparsers(parser)):
            if "examples:\n  " not in (parser.epilog or ""):
                no_examples.append(" ".join(path))
    assert no_help == []
    assert no_examples == []


def test_global_options_work_after_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    for path, parser in _commands():
        options = {o for a in parser._actions for o in a.option_strings}
        assert set(GLOBALS) <= options, " ".join(path)
    assert main(["store", "init", "--store", str(store)]) == 0
    assert capsys.readouterr().out.strip() == f"store ready at {store}"
    # the value after the command wins over the one before it; the one before it stays when none follows
    assert main(["--store", str(tmp_path / "elsewhere"), "layer", "list", "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"layers": []}
    assert main(["--store", str(store), "-v", "layer", "list"]) == 0
    assert "no layers yet" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["layer", "import"], "layerboot: error: layer import: the following arguments are required: path"),
    (["layer", "frobnicate"], "layerboot: error: layer: argument ACTION: invalid choice: 'frobnicate'"),
    (["profile", "show", "web", "--generation", "two"],
     "layerboot: error: profile show: argument -g/--generation: invalid int value: 'two'"),
    (["layer", "list", "--no-such-option"], "layerboot: error: unrecognized arguments: --no-such-option"),
    (["layer", "import", "x", "--owner", "root"],
     "layerboot: error: layer import: argument --owner: 'root' is not UID:GID (numbers, e.g. 0:0)"),
])
def test_usage_errors_are_one_line_and_exit_1(argv: list[str], message: str, tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "layerboot", "--store", str(tmp_path), *argv], check=False)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert lines[0].startswith(message) and len(lines) == 2
    assert lines[1].startswith("layerboot: hint: see 'layerboot")
    assert "usage:" not in result.stderr.decode() and result.stdout == b""


def test_daemon_usage_errors_too() -> None:
    result = run([sys.executable, "-m", "layerboot.server.main", "--port", "eighty"], check=False)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["layerbootd: error: argument --port: 'eighty' is not a TCP port (0-65535)",
                                                   "layerbootd: hint: see 'layerbootd --help'"]


def test_cli_output_has_no_logger_names(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "layerboot", "-v", "--store", str(tmp_path / "s"), "store", "init"])
    run([sys.executable, "-m", "layerboot", "-v", "--store", str(tmp_path / "s"), "key", "generate"])
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/motd").write_text("hi\n")
    imported = run([sys.executable, "-m", "layerboot", "-v", "--store", str(tmp_path / "s"), "layer", "import",
                    str(tree), "--all-root"])
    err = (result.stderr + imported.stderr).decode()
    assert "layerboot: stored base layer" in err and "layerboot." not in err and " INFO " not in err


def test_json_output_carries_the_records(store, make_layer, profiles, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_layer({"etc/os-release": "base\n"}, kind="base", description="the base")
    top = make_layer({"etc/motd": "hi\n"}, base=base)
    profiles.create("web", base, cmdline="console=ttyS0")
    profiles.add("web", top)
    s = ["--store", str(store.paths.root)]

    def cli_json(*argv: str):  # noqa: ANN202
        assert main([*s, *argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    layers = cli_json("layer", "list")["layers"]        # the documents of /api/v1 (server/api/openapi.py)
    assert {layer["digest"]: layer["description"] for layer in layers}[base] == "the base" and len(layers) == 2
    shown = cli_json("layer", "show", base[:8])
    assert shown["digest"] == base
    assert shown["used_by"] == ["profile web generations 1-2", f"the base of layer {top[:12]}"]
    assert cli_json("profile", "list")["profiles"][0]["current"] | {"created": None} == {
        "profile": "web", "number": 2, "layers": [base, top], "action": f"add {top[:12]} at 1", "serial": 2,
        "cmdline": "console=ttyS0", "kernel": None, "initrd": None, "modules": None, "created": None}
    assert [g["number"] for g in cli_json("profile", "log", "web")["generations"]] == [2, 1]
    assert cli_json("profile", "show", "web")["layers"] == [base, top]
    assert cli_json("profile", "diff", "web", "1", "2")["added"] == [top]
    assert cli_json("manifest", "show", "web")["payload"]["serial"] == 2
    assert cli_json("key", "show")["key_id"]
    assert cli_json("config", "show")["store.root"] == str(store.paths.root)
    assert cli_json("nodes") == {"nodes": []} and cli_json("uploads") == {"uploads": []}

    def cli_text(*argv: str) -> str:
        assert main([*s, *argv]) == 0, argv
        return capsys.readouterr().out

    # the same commands as tables and sentences: each names what its record holds
    assert base[:12] in cli_text("layer", "list") and "the base" in cli_text("layer", "show", base[:8])
    shown = cli_text("profile", "show", "web")
    assert "generation 2" in shown and base[:12] in shown and top[:12] in shown
    assert "web" in cli_text("profile", "list") and f"add {top[:12]} at 1" in cli_text("profile", "log", "web")
    assert top[:12] in cli_text("profile", "diff", "web", "1", "2")


def test_bash_completion_completes_commands_and_actions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "layerboot.bash"
    script.write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        code = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
                "COMP_POINT=${#COMP_LINE}; _shtab_layerboot; printf '%s\\n' \"${COMPREPLY[@]}\"")
        return run(["bash", "-c", code]).text.split()

    assert complete("layerboot", "pro") == ["profile"]
    assert complete("layerboot", "profile", "ro") == ["rollback"]
    assert set(complete("layerboot", "store", "")) == {"init", "fsck", "gc"}
    assert main(["completion", "zsh", "--program", "layerbootd"]) == 0
    assert "#compdef layerbootd" in capsys.readouterr().out


@pytest.mark.skipif(tool_path("groff") is None, reason="needs groff (man-db's renderer)")
def test_man_pages_render_without_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manpages", str(tmp_path / "man")]) == 0
    pages = sorted((tmp_path / "man").glob("man*/*"))
    commands = [name for name, _ in subparsers(build_parser())]
    assert {p.name for p in pages} == {"layerboot.1", "layerbootd.8", *(f"layerboot-{c}.1" for c in commands)}
    for page in pages:
        result = run(["groff", "-man", "-Tutf8", "-ww", "-z", page])
        assert result.stderr == b"", (page.name, result.stderr)
    text = run(["groff", "-man", "-Tascii", "-P", "-cbou", tmp_path / "man/man1/layerboot-profile.1"]).text
    assert "LAYERBOOT PROFILE ROLLBACK" in text and "layerboot profile rollback web 2" in text
    assert "--json" in text and "GLOBAL OPTIONS" in text
    daemon = run(["groff", "-man", "-Tascii", "-P", "-cbou", tmp_path / "man/man8/layerbootd.8"]).text
    assert "SIGHUP" in daemon and "--ssh-port" in daemon
