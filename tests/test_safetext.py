"""Output escaping (issue 11 item 5): one function, used by the log formatter, the CLI's tables and errors, and
stage1's console lines."""

from __future__ import annotations

import logging

from layerboot.errors import LayerbootError
from layerboot.initrd.stage1.console import one_line
from layerboot.log import SafeFormatter, run_main
from layerboot.safetext import printable
from layerboot.tools.output import table

HOSTILE = "a\nb\r\tc\x1b[2J\x1b]0;title\x07\x9b31m\u202eevil\u2028\ud800 d"


def test_printable_escapes_controls_escapes_bidi_separators_and_surrogates() -> None:
    assert printable(HOSTILE) == "a\\nb\\r\\tc\\x1b[2J\\x1b]0;title\\x07\\x9b31m\\u202eevil\\u2028\\ud800 d"
    assert printable("plain text, ünïcödé and C:\\path") == "plain text, ünïcödé and C:\\path"
    assert printable(42) == "42" and printable("\U000e0001") == "\\U000e0001"
    assert printable(HOSTILE).isprintable() and printable(HOSTILE).encode("utf-8")
    assert one_line(HOSTILE).isprintable() and "\x1b" not in one_line(HOSTILE)    # stage1's copy


def test_log_records_stay_one_line_but_tracebacks_keep_their_lines() -> None:
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("layerboot.x", logging.WARNING, __file__, 1, "event: %s", (HOSTILE,), None)
    text = formatter.format(record)
    assert "\n" not in text and "\x1b" not in text and text.startswith("WARNING layerboot.x: event: a\\nb")
    try:
        raise ValueError("bad\x1b[31m\nvalue")
    except ValueError:
        import sys
        record = logging.LogRecord("layerboot.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR layerboot.x: failed" and lines[1] == "  Traceback (most recent call last):"
    assert lines[-2:] == ["  ValueError: bad\\x1b[31m", "  value"]        # a newline in a message stays indented
    assert all(line.startswith("  ") for line in lines[1:])


def test_tables_and_cli_errors_escape_cells_and_messages(capsys) -> None:  # noqa: ANN001
    rendered = table(["NODE", "MESSAGE"], [["52:54:00:12:34:56", HOSTILE]])
    assert len(rendered.splitlines()) == 2 and "\x1b" not in rendered and "\\x1b[2J" in rendered

    def fail() -> int:
        raise LayerbootError(f"refused by the server: {HOSTILE}", hint="\x1b[8mhidden")

    assert run_main(fail, debug=False, prog="layerboot") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "\x1b" not in "".join(err) and err[1] == "layerboot: hint: \\x1b[8mhidden"
