"""The command-line conventions every layerboot command follows, in one place.

* Usage errors are one line, ``layerboot: error: <command>: <what>``, plus a hint naming the command's
  ``--help``, and exit with status 1 like every other expected failure (argparse prints the usage and exits 2).
* The global options (``--store``, ``--config``, ``-v``, ``--debug``, ``--progress``) are accepted before the
  command and after it: :func:`spread_global_options` copies them onto every sub-command once the tree is
  built, so commands added later get them too.
* ``--json`` on every list/show command (:func:`add_json`), printing the same records the HTTP API returns,
  through :func:`print_json`.
* Every argument has a help text and every command examples (:func:`examples`); ``--help`` wraps prose
  paragraphs and keeps indented example lines as written. A test walks the parser tree and enforces all this.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

from layerboot.progress import MODES

# commands that list or show records: each must take --json (tests/test_cli_conventions.py checks the tree)
LISTING_NAMES = ("list", "show", "status", "log")


class HelpFormatter(argparse.HelpFormatter):
    """Wrap prose paragraphs; keep lines indented by two or more spaces (examples, tables) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
            lines = paragraph.splitlines()
            if any(line.startswith("  ") for line in lines[1:]) or paragraph.startswith("  "):
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(super()._fill_text(" ".join(line.strip() for line in lines), width, indent))
        return "\n\n".join(blocks)


class Parser(argparse.ArgumentParser):
    """argparse with layerboot's error convention: one line (plus a hint), exit status 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        root, _, command = self.prog.partition(" ")
        where = f"{command}: " if command else ""
        print(f"{root}: error: {where}{message}", file=sys.stderr)
        print(f"{root}: hint: see '{self.prog} --help'", file=sys.stderr)
        sys.exit(1)


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The options every layerboot command takes. Copies on sub-commands default to SUPPRESS, so a value
    given before the command is kept unless the same option is given again after it."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options", "accepted before the command and after it") \
        if suppress else parser
    group.add_argument("-c", "--config", type=Path, metavar="FILE", default=default(None),
                        help="TOML config (default: $LAYERBOOT_CONFIG or /etc/layerboot/layerboot.toml)")
    group.add_argument("-s", "--store", metavar="DIR", default=default(None),
                        help="layer store directory (overrides store.root)")
    group.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="say what happens (-vv: debug messages)")
    group.add_argument("--debug", action="store_true", default=default(False),
                        help="debug messages, and a traceback for every error")
    group.add_argument("--progress", choices=MODES, metavar="MODE", default=default("auto"),
                        help="progress of long steps on stderr: auto (a bar on a terminal, else a line every "
                             "few seconds), bar, plain, log or off")


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of the direct sub-commands of ``parser`` (aliases excluded)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                       argparse.ArgumentParser]]:
    """Every parser of the tree with its command path, the root first."""
    yield path, parser
    for name, sub in subparsers(parser):
        yield from walk(sub, (*path, name))


def spread_global_options(root: argparse.ArgumentParser) -> None:
    """Accept the global options after any sub-command too (``layerboot layer list --store DIR``)."""
    for path, parser in walk(root):
        if path:
            add_global_options(parser, suppress=True)


def examples(parser: argparse.ArgumentParser, *lines: str) -> argparse.ArgumentParser:
    """Set the ``examples:`` section of a command's --help (one command line each, '# comment' allowed)."""
    parser.epilog = "examples:\n" + "\n".join("  " + line for line in lines)
    return parser


RESULT_JSON = "print the result as JSON instead of a sentence"


def add_json(parser: argparse.ArgumentParser,
             help: str = "print JSON (the records layerbootd's API returns) instead of a table",
             ) -> argparse.ArgumentParser:
    """``--json``; commands that change something print their result with ``help=RESULT_JSON``."""
    parser.add_argument("--json", action="store_true", help=help)
    return parser


def records(value: Any) -> Any:
    """Dataclasses (and lists/dicts of them) as plain JSON-able data."""
    if is_dataclass(value) and not isinstance(value, type):
        return records(asdict(value))
    if isinstance(value, dict):
        return {str(k): records(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [records(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> int:
    print(json.dumps(records(value), indent=2, sort_keys=True))
    return 0
