"""JSON for stage1 on top of the ``_json`` C accelerator, without the ``json`` package.

``import json`` loads ``re`` and its ~20 modules: measured 0.1 s of stage1's 0.25 s of imports under TCG. The
parser here is the very scanner ``json.loads`` uses (``_json.make_scanner``); the encoder covers what stage1
writes (dicts, lists, strings, numbers, booleans, None). On malformed input the C scanner imports
``json.decoder`` for its error class; that path is only taken for input that is refused anyway.
"""

from __future__ import annotations


class _Context:
    """The attributes ``_json.make_scanner`` reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not allowed")


def loads(text: str) -> object:
    """Parse a JSON document; ValueError (one line) when it is not one."""
    import _json

    scan = _json.make_scanner(_Context())
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = scan(text, start)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    except Exception as err:  # noqa: BLE001 - JSONDecodeError (a ValueError) or its import failing
        raise ValueError(f"not a JSON document ({err})") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data after the JSON document at offset {end}")
    return value


def dumps(value: object, *, sort_keys: bool = False) -> str:
    """Serialise like ``json.dumps`` (default separators, ASCII output)."""
    import _json

    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not JSON")
        return float.__repr__(value)
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else value.items()
        parts = []
        for key, item in items:
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            parts.append(f"{_json.encode_basestring_ascii(key)}: {dumps(item, sort_keys=sort_keys)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(item, sort_keys=sort_keys) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
