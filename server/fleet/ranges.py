"""Name ranges and counted addresses, for describing many nodes in one command.

* :func:`expand` — a host list: ``n[001-100]`` (zero padding from the first number), ``n[1-4,7,9-10]``,
  ``rack[1-2]-n[01-20]`` (every combination, in order), several comma-separated at the top level
  (``login1,n[01-04]``) and an increment (``n[001-100:2]``: every second number).
* :func:`nth_mac`, :func:`nth_address` — the i-th MAC or address counted up from a start, by a step; running
  past the MAC space or out of the subnet is one clear error naming the node.
"""

from __future__ import annotations

import ipaddress
import re

from layerboot.errors import LayerbootError
from layerboot.safetext import printable

MAX_NAMES = 100_000
_GROUP = re.compile(r"\[([^\[\]]*)\]")
_PART = re.compile(r"(\d+)(?:-(\d+))?(?::(\d+))?")


class RangeError(LayerbootError):
    pass


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise RangeError(f"{printable(text[:80])!r}: ']' without '['")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise RangeError(f"{printable(text[:80])!r}: '[' without ']'")
    parts.append(current)
    return parts


def _numbers(spec: str, whole: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        match = _PART.fullmatch(part.strip())
        if not match:
            raise RangeError(f"{printable(whole[:80])!r}: {part!r} is not N, N-M or N-M:STEP")
        first, last, step = match.group(1), match.group(2) or match.group(1), int(match.group(3) or 1)
        if int(last) < int(first) or step < 1:
            raise RangeError(f"{printable(whole[:80])!r}: {part} counts down or has a zero step")
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        if (int(last) - int(first)) // step + len(out) > MAX_NAMES:
            raise RangeError(f"{printable(whole[:80])!r} names more than {MAX_NAMES} nodes")
        out += [str(n).zfill(width) for n in range(int(first), int(last) + 1, step)]
    return out


def expand(text: str) -> list[str]:
    """Every name of a host list, in order, without repeats."""
    names: list[str] = []
    for item in _split_top(text.strip()):
        item = item.strip()
        if not item:
            raise RangeError(f"{printable(text[:80])!r} has an empty name")
        expanded = [""]
        position = 0
        for match in _GROUP.finditer(item):
            prefix = item[position:match.start()]
            values = _numbers(match.group(1), text)
            if len(expanded) * len(values) > MAX_NAMES:
                raise RangeError(f"{printable(text[:80])!r} names more than {MAX_NAMES} nodes")
            expanded = [f"{e}{prefix}{v}" for e in expanded for v in values]
            position = match.end()
        if "[" in item[position:] or "]" in item[position:]:
            raise RangeError(f"{printable(text[:80])!r}: unbalanced brackets")
        names += [e + item[position:] for e in expanded]
    return list(dict.fromkeys(names))


def is_range(text: str) -> bool:
    return "[" in text or "," in text


def nth_mac(start: str, index: int, step: int = 1, *, name: str = "") -> str:
    """``start`` + ``index`` × ``step`` as a MAC (the 48 bits counted as one number)."""
    from layerboot.server.nodes import normalize_mac
    value = int(normalize_mac(start).replace(":", ""), 16) + index * step
    if not 0 <= value < 1 << 48:
        raise RangeError(f"counting MACs from {start} by {step} runs out of MAC space at {name or index}")
    digits = f"{value:012x}"
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def nth_address(start: str, index: int, step: int = 1, *, name: str = "") -> str:
    """``start`` (``ADDRESS/PREFIX``) + ``index`` × ``step``, with the same prefix; an error when that leaves
    the subnet or hits its network or broadcast address."""
    iface = ipaddress.ip_interface(start)
    network = iface.network
    try:
        address = iface.ip + index * step
    except (ValueError, ipaddress.AddressValueError):
        address = None
    if address is None or address not in network or (
            iface.version == 4 and network.prefixlen < 31 and address in (network.network_address,
                                                                          network.broadcast_address)):
        raise RangeError(f"counting addresses from {start} by {step}: {name or f'node {index + 1}'} would be "
                         f"outside {network}", hint="give a larger subnet, a lower start or fewer nodes")
    return f"{address}/{network.prefixlen}"
