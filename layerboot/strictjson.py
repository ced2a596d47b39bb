"""Strict JSON for everything layerboot reads from outside: I-JSON (RFC 7493) plus a nesting limit.

Python's json module is lenient where that hurts a server: it accepts ``NaN``, ``Infinity`` and ``-Infinity``
(then writes them back out, which no other JSON parser reads), ``1e999`` (becomes infinity), integers of any
size (and raises ValueError, not JSONDecodeError, past 4300 digits), lone surrogates such as ``"\\ud800"`` (a
str that cannot be encoded to UTF-8 or stored in SQLite), duplicate keys (the last one wins; other parsers
take the first: a parser differential), and nesting until RecursionError.

:func:`loads` refuses each of these with one :class:`JSONError` (a LayerbootError: one line on the CLI, a 400
from layerbootd) that says what was being read. What it returns is a document :func:`dumps` can write back as
strict JSON. Numbers follow I-JSON: integers within +-(2**53 - 1), finite doubles. The node side (stage1) has
its own parser, initrd/stage1/jsonlite.py, with no such checks: it only reads signed, verified documents.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from layerboot.errors import LayerbootError

MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2 ** 53 - 1          # I-JSON: integers a double holds exactly
_MAX_INT_CHARS = len(str(MAX_SAFE_INTEGER)) + 1   # sign
_MAX_FLOAT_CHARS = 400                  # longer decimal texts are refused before Python converts them
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONError(LayerbootError):
    """A JSON document from outside that is malformed or outside what layerboot accepts."""


class _Refused(Exception):
    pass


def _int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise _Refused(f"the integer {_excerpt(text)} is out of range (at most {MAX_SAFE_INTEGER} either way)")
    return value


def _float(text: str) -> float:
    if len(text) > _MAX_FLOAT_CHARS or not math.isfinite(value := float(text)):
        raise _Refused(f"the number {_excerpt(text)} is out of range (not a finite double)")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"the key {_excerpt(key)!r} appears twice in one object")
        result[key] = value
    return result


def _excerpt(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_tree(value: Any, max_depth: int) -> None:
    """Depth and lone surrogates, iteratively (a recursive walk could overflow on what json just parsed)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _Refused("a string holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                raise _Refused(f"it is nested more than {max_depth} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def loads(data: bytes | bytearray | str, *, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` strictly; ``what`` names the document in the error ("boot event", "manifest file x")."""
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise JSONError(f"{what} is not UTF-8 text (bad byte at offset {err.start})") from None
    else:
        text = data
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant,
                           object_pairs_hook=_object)
        _check_tree(value, max_depth)
    except json.JSONDecodeError as err:
        raise JSONError(f"{what} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise JSONError(f"{what} is refused: it is nested more than {max_depth} levels deep") from None
    except _Refused as err:
        raise JSONError(f"{what} is refused: {err}") from None
    return value


def dumps(value: Any, *, indent: int | None = None, sort_keys: bool = True) -> str:
    """Serialise for the outside: refuses NaN/Infinity and lone surrogates (ValueError: a bug, never input)."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False, ensure_ascii=False)
    if _SURROGATE.search(text):
        raise ValueError("refusing to serialise a lone surrogate")
    return text
