"""Man pages generated from the argparse tree, so they always match ``--help``.

``layerboot(1)`` lists the commands and the global options; ``layerboot-COMMAND(1)`` documents one command
with all its actions (usage, description, options, examples); ``layerbootd(8)`` the daemon. The date is
$SOURCE_DATE_EPOCH's when set, so the pages build reproducibly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from layerboot import __version__
from layerboot.tools.parser import subparsers

GLOBAL_DESTS = ("config", "store", "verbose", "debug", "progress")


@dataclass(frozen=True)
class Page:
    name: str          # e.g. "layerboot-profile"
    section: int
    text: str

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.section}"


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch.isdigit() \
        else dt.datetime.now(dt.timezone.utc)
    return when.strftime("%Y-%m-%d")


def escape(text: str) -> str:
    """Plain text as roff: backslashes, dashes, and lines that would start a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _paragraphs(text: str | None) -> list[str]:
    if not text:
        return []
    out = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        lines = block.splitlines()
        if block.startswith("  ") or any(line.startswith("  ") for line in lines[1:]):
            out.append(".nf\n" + escape("\n".join(line.rstrip() for line in lines)) + "\n.fi")
        else:
            out.append(escape(" ".join(line.strip() for line in lines)))
    return out


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def _term(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"\\fB{escape(o)}\\fR" for o in action.option_strings)
        if action.nargs == 0:
            return names
        metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                                     else action.dest.upper())
        return f"{names} \\fI{escape(str(metavar))}\\fR"
    metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest)
    return f"\\fI{escape(str(metavar))}\\fR"


def _options(parser: argparse.ArgumentParser, *, skip_globals: bool) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        if skip_globals and action.dest in GLOBAL_DESTS:
            continue
        lines += [".TP", _term(action), escape(_help(parser, action))]
    return lines


def _usage(parser: argparse.ArgumentParser, *, skip_globals: bool = True) -> str:
    """The synopsis line: the command's own options and arguments (global ones are in layerboot(1))."""
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)
               and not (skip_globals and a.dest in GLOBAL_DESTS)]
    formatter = parser._get_formatter()
    formatter.add_usage(None, actions, [], prefix="")
    usage = " ".join(formatter.format_help().split())
    return ".nf\n" + escape(usage) + "\n.fi"


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    epilog = parser.epilog or ""
    lines = [line[2:] for line in epilog.splitlines() if line.startswith("  ")]
    return [".nf", escape("\n".join(lines)), ".fi"] if lines else []


def _header(name: str, section: int, title: str) -> list[str]:
    kind = "System Administration" if section == 8 else "User Commands"
    return [f'.TH "{name.upper()}" "{section}" "{_date()}" "layerboot {__version__}" "{kind}"',
            ".SH NAME", f"{escape(name)} \\- {escape(title)}"]


def command_page(root: argparse.ArgumentParser, name: str, parser: argparse.ArgumentParser, summary: str) -> Page:
    """``layerboot-NAME(1)``: one command with every action below it."""
    lines = _header(f"layerboot-{name}", 1, summary)
    leaves = list(_leaves(parser))
    lines += [".SH SYNOPSIS", *[_usage(p) for _, p in leaves]]
    lines += [".SH DESCRIPTION", *_paragraphs(parser.description or summary)]
    own = _options(parser, skip_globals=True)
    if own:
        lines += [".SH OPTIONS", *own]
    for path, leaf in leaves:
        if leaf is parser:
            continue
        lines += [f'.SH "{escape("layerboot " + name + " " + " ".join(path)).upper()}"', *_paragraphs(leaf.description)]
        options = _options(leaf, skip_globals=True)
        if options:
            lines += [".SS Options", *options]
        if leaf.epilog:
            lines += [".SS Examples", *_examples(leaf)]
    if parser.epilog:
        lines += [".SH EXAMPLES", *_examples(parser)]
    lines += [".SH \"GLOBAL OPTIONS\"", "Accepted before or after the command; see \\fBlayerboot\\fR(1).",
              ".SH \"SEE ALSO\"", "\\fBlayerboot\\fR(1), \\fBlayerbootd\\fR(8)"]
    return Page(f"layerboot-{name}", 1, "\n".join(lines) + "\n")


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    """The parser itself when it runs something, then every action below it."""
    children = list(subparsers(parser))
    if not children or parser.get_default("func") is not None:
        yield path, parser
    for name, child in children:
        yield from _leaves(child, (*path, name))


def main_page(root: argparse.ArgumentParser, commands: list[tuple[str, str]]) -> Page:
    lines = _header("layerboot", 1, "boot diskless Linux nodes from signed squashfs layers")
    lines += [".SH SYNOPSIS", ".B layerboot", "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
              ".SH DESCRIPTION", *_paragraphs(root.description), ".SH \"GLOBAL OPTIONS\"",
              "Accepted before the command and after it.", *_options(root, skip_globals=False), ".SH COMMANDS"]
    for name, summary in commands:
        lines += [".TP", f"\\fB{escape(name)}\\fR", f"{escape(summary)} See \\fBlayerboot\\-{escape(name)}\\fR(1)."]
    lines += [
        ".SH \"EXIT STATUS\"",
        ".TP", "0", "success",
        ".TP", "1", "an expected failure or a usage error: one line \\fBlayerboot: error: ...\\fR on stderr, "
                    "and a \\fBhint:\\fR line when there is something to do about it",
        ".TP", "70", "an internal error (a bug); \\fB\\-\\-debug\\fR shows the traceback",
        ".TP", "130", "interrupted",
        ".SH ENVIRONMENT",
        ".TP", "LAYERBOOT_CONFIG", "the config file when \\fB\\-\\-config\\fR is not given",
        ".TP", "LAYERBOOT_PROGRESS", "bar, plain or off: overrides how progress is shown",
        ".TP", "SOURCE_DATE_EPOCH", "timestamp for reproducible layer imports (passed to mksquashfs)",
        ".TP", "http_proxy, https_proxy, no_proxy", "passed to the commands layerboot runs (apt, debootstrap)",
        ".SH FILES",
        ".TP", "/etc/layerboot/layerboot.toml", "the configuration (\\fBlayerboot config reference\\fR)",
        ".TP", "/var/lib/layerboot", "the default store",
        ".TP", "/var/cache/layerboot", "downloads and builds kept between runs (kernel, debootstrap, initrd)",
        ".SH EXAMPLES", *_examples(root),
        ".SH \"SEE ALSO\"",
        ", ".join(f"\\fBlayerboot\\-{escape(name)}\\fR(1)" for name, _ in commands) + ", \\fBlayerbootd\\fR(8)"]
    return Page("layerboot", 1, "\n".join(lines) + "\n")


def daemon_page(parser: argparse.ArgumentParser) -> Page:
    lines = _header("layerbootd", 8, "the layerboot netboot server")
    lines += [".SH SYNOPSIS", _usage(parser, skip_globals=False), ".SH DESCRIPTION",
              *_paragraphs(parser.description), ".SH OPTIONS", *_options(parser, skip_globals=False)]
    if parser.epilog:
        lines += [".SH EXAMPLES", *_examples(parser)]
    lines += [".SH SIGNALS",
              ".TP", "SIGHUP", "reload the configuration: the settings that can change without a restart take "
                               "effect, the others are reported in the log (see layerbootd.service)",
              ".TP", "SIGTERM, SIGINT", "stop: finish the requests in flight; interrupted bakes are redone on the "
                                        "next start",
              ".SH FILES", ".TP", "/etc/layerboot/layerboot.toml", "the configuration",
              ".TP", "/var/lib/layerboot", "the store, including state/layerbootd.sqlite and state/admin.token",
              ".SH \"SEE ALSO\"", "\\fBlayerboot\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)"]
    return Page("layerbootd", 8, "\n".join(lines) + "\n")


def all_pages(root: argparse.ArgumentParser, daemon: argparse.ArgumentParser) -> list[Page]:
    commands: list[tuple[str, str]] = []
    helps = {}
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
    pages = []
    for name, parser in subparsers(root):
        summary = helps.get(name) or parser.description or name
        commands.append((name, summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else ".")))
        pages.append(command_page(root, name, parser, summary))
    return [main_page(root, commands), daemon_page(daemon), *pages]
