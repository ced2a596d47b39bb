"""What a profile's chain has installed, for the templates: systemd-networkd or ifupdown, chrony or timesyncd,
rsyslog, sshd.

Each layer is listed once with ``unsquashfs -l`` (its directory tables only, not its data) and the answer is
kept by digest in ``state/fleet/probes/<digest>.json`` (a layer never changes); a chain has a program when any of
its layers carries one of its paths (merged-/usr bases carry usr/lib/..., older ones lib/...).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from layerboot.atomic import write_text
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.run import require_tool, run

PROBES = {
    "systemd": ("usr/lib/systemd/systemd", "lib/systemd/systemd"),
    "networkd": ("usr/lib/systemd/systemd-networkd", "lib/systemd/systemd-networkd"),
    "ifupdown": ("usr/sbin/ifup", "sbin/ifup"),
    "chrony": ("usr/sbin/chronyd",),
    "timesyncd": ("usr/lib/systemd/systemd-timesyncd", "lib/systemd/systemd-timesyncd"),
    "rsyslog": ("usr/sbin/rsyslogd",),
    "sshd": ("usr/sbin/sshd",),
}
VERSION = 1


def _listing(image: Path) -> set[str]:
    require_tool("unsquashfs", package="squashfs-tools")
    text = run(["unsquashfs", "-l", "-d", "r", image], timeout=300).text
    return {line[2:] for line in text.splitlines() if line.startswith("r/")}


@lru_cache(maxsize=256)
def _layer(store_root: str, digest: str) -> tuple[tuple[str, bool], ...]:
    paths = Paths(Path(store_root))
    cache = paths.state / "fleet" / "probes" / f"{digest}.json"
    try:
        data = json.loads(cache.read_text())
        if data.get("version") == VERSION:
            return tuple(sorted(data["found"].items()))
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    names = _listing(paths.object(digest))
    found = {name: any(p in names for p in candidates) for name, candidates in PROBES.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_text(cache, json.dumps({"version": VERSION, "found": found}, sort_keys=True) + "\n")
    return tuple(sorted(found.items()))


def probe_chain(store: Store, digests: tuple[str, ...]) -> dict[str, bool]:
    """{program: present in any layer of the chain}."""
    result = {name: False for name in PROBES}
    for digest in digests:
        for name, present in _layer(str(store.paths.root), digest):
            result[name] = result[name] or present
    return result
