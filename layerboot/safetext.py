"""Text from outside (nodes, HTTP clients, uploads) made safe to print on a terminal or to write as a log line.

A boot-event message, a request path, a user agent or a tar member name may carry newlines (a forged log line),
ANSI/OSC escape sequences (a recoloured, retitled or cleared terminal, a hyperlink), bidi overrides (text that
reads differently than it is) or lone surrogates (not encodable as UTF-8 at all). :func:`printable` keeps every
printable character and the plain space, and writes everything else as a Python-style escape: ``\\n``, ``\\t``,
``\\r``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. The result is one line with nothing a terminal interprets.

Backslashes are kept as they are (a path like ``C:\\x`` stays readable); the escaping is for the eye and for
line-oriented tools, not a reversible encoding.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: object) -> str:
    """``str(value)`` with every control, format, separator (except space), surrogate or unassigned character
    escaped: safe to print as part of one line."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch == " " or ch.isprintable() else _escape(ch) for ch in text)
