"""layerboot itself: its own initrd (build/initrd.py) booting the benchmark rootfs from layerbootd.

The rootfs image is imported as the base layer of a store; the second-boot benchmark's one-file change is an
overlay layer stacked on it (a new generation), so layerboot's second boot fetches the base again plus one
small layer without a cache.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from peers.system import Bench, System, Unavailable

NEEDS = {
    "layerboot.build.initrd": "build/initrd.py (layerboot's initrd builder, issue 5)",
    "layerboot.server.main": "server/main.py (layerbootd)",
}


def missing_parts() -> list[str]:
    """The parts of layerboot this variant needs that are not in this tree yet."""
    return [what for module, what in NEEDS.items() if importlib.util.find_spec(module) is None]


@contextmanager
def system(bench: Bench) -> Iterator[System]:
    missing = missing_parts()
    if missing:
        raise Unavailable("not yet available: " + ", ".join(missing) + " not in this tree")
    raise Unavailable("not yet available: the benchmark is not wired to layerboot's initrd yet")
    yield  # pragma: no cover - a generator for contextmanager
