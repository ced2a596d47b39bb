"""Logging set-up and the top-level handler that turns expected failures into one line and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from layerboot.errors import LayerbootError

log = logging.getLogger("layerboot")


class CliFormatter(logging.Formatter):
    """``layerboot: message`` for info, ``layerboot: warning: message`` and so on: the program's name, never
    a logger's (those are for the daemon's journal fields and for debugging with -vv)."""

    def __init__(self, prog: str = "layerboot") -> None:
        super().__init__("%(message)s")
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
        return f"{self.prog}: {level}{text}"


def setup_logging(*, verbose: int = 0, debug: bool = False, prog: str = "layerboot") -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv or --debug."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    if verbose >= 2 or debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CliFormatter(prog))
    root = logging.getLogger("layerboot")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run_main(body: Callable[[], int | None], *, debug: bool, prog: str) -> int:
    """Run a CLI body; expected errors print ``prog: error: ...`` (and a hint) and return their exit code.

    Unexpected exceptions are bugs: they print one line too, and the traceback only with --debug.
    """
    try:
        return body() or 0
    except LayerbootError as err:
        print(f"{prog}: error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"{prog}: hint: {err.hint}", file=sys.stderr)
        if debug:
            raise
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # a bug: still one line unless --debug
        if debug:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 70
