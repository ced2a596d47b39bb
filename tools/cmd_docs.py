"""``layerboot completion`` and ``layerboot manpages``: shell completion and man pages from the parser itself.

The install step (.ci/install) writes both: completions to /usr/local/share/bash-completion/completions and
/usr/local/share/zsh/site-functions, the pages to /usr/local/share/man. Completion scripts come from shtab
(static scripts, nothing runs at completion time); the pages from :mod:`layerboot.tools.manpage`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layerboot.atomic import write_text
from layerboot.errors import LayerbootError
from layerboot.tools.context import Context
from layerboot.tools.parser import examples

SHELLS = ("bash", "zsh", "tcsh")
PROGRAMS = ("layerboot", "layerbootd")


def register(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("completion", help="print a shell completion script",
                          description="Print the completion script for SHELL. The install step puts them where "
                                      "bash-completion and zsh find them; to try one: source <(layerboot "
                                      "completion bash).")
    comp.add_argument("shell", choices=SHELLS, help="the shell the script is for")
    comp.add_argument("--program", choices=PROGRAMS, default="layerboot",
                      help="complete this program (default: %(default)s)")
    comp.set_defaults(func=cmd_completion)
    examples(comp, "layerboot completion bash > /usr/local/share/bash-completion/completions/layerboot",
             "layerboot completion zsh > /usr/local/share/zsh/site-functions/_layerboot",
             "layerboot completion bash --program layerbootd > /usr/local/share/bash-completion/completions/layerbootd")

    man = sub.add_parser("manpages", help="write the man pages (layerboot(1), layerboot-COMMAND(1), layerbootd(8))",
                         description="Write the man pages, generated from the same parser as --help, into "
                                     "DIR/man1 and DIR/man8.")
    man.add_argument("directory", type=Path, metavar="DIR", help="man page root, e.g. /usr/local/share/man")
    man.set_defaults(func=cmd_manpages)
    examples(man, "layerboot manpages /usr/local/share/man && mandb -q", "layerboot manpages /tmp/man && "
             "man -l /tmp/man/man1/layerboot-profile.1")


def _parser(program: str) -> argparse.ArgumentParser:
    if program == "layerbootd":
        from layerboot.server.main import build_parser as daemon_parser
        return daemon_parser()
    from layerboot.tools.cli import build_parser
    return build_parser()


def cmd_completion(ctx: Context) -> int:
    try:
        import shtab
    except ImportError:
        raise LayerbootError("shell completion needs the Python package shtab",
                             hint="pip install shtab (it is a dependency of layerboot)") from None
    print(shtab.complete(_parser(ctx.args.program), shell=ctx.args.shell), end="")
    return 0


def cmd_manpages(ctx: Context) -> int:
    from layerboot.tools.manpage import all_pages

    root: Path = ctx.args.directory
    written = []
    for page in all_pages(_parser("layerboot"), _parser("layerbootd")):
        target = root / f"man{page.section}" / page.filename
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text(target, page.text)
        except OSError as err:
            raise LayerbootError(f"cannot write {target}: {err.strerror}") from None
        written.append(target)
    sections = ", ".join(sorted({p.parent.name for p in written}))
    print(f"wrote {len(written)} man pages under {root} ({sections})")
    return 0
