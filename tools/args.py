"""argparse types for numbers with a range: a value outside it is argparse's one-line usage error, not a crash
deep inside a library (zstandard's OverflowError on --threads 99999999999999)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

_INTEGER = re.compile(r"-?[0-9]{1,19}")


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = text.strip()
        if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"{text[:24]!r} is not a whole number from {low} to {high}")
        return int(value)

    return parse
