"""What an upload adds, changes and deletes, for the admin who approves it.

An upload held for approval is a baked overlay layer already: its entries are listed with ``rdsquashfs -d``
(squashfs-tools-ng's description of an image, one entry a line). One still in the queue is its tar.zst,
read member by member with the same checks a bake applies (overlays/tarscan.py), data skipped. Each entry
is compared with the chain of the profile's current generation (its layers merged base first, whiteouts
applied): a whiteout is a **delete**, a path the chain has is a **change**, anything else an **add**.
Directories are left out (they come with what they hold); opaque directories count as directories. The
listing of a layer is cached by digest (layers never change).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run

LISTING_CACHE = 32                 # layer listings kept (a base of 40 000 files is a few MB)
MAX_SHOWN = 5000                   # entries returned for one upload


@dataclass(frozen=True)
class Change:
    path: str
    action: str                    # add | change | delete
    kind: str                      # file | symlink | hardlink | fifo | chardev | blockdev | whiteout

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "action": self.action, "kind": self.kind}


_KINDS = {"file": "file", "slink": "symlink", "link": "hardlink", "pipe": "fifo", "sock": "socket", "dir": "dir"}
_cache: "OrderedDict[str, dict[str, str]]" = OrderedDict()
_lock = threading.Lock()


def _path_token(line: str) -> tuple[str, str]:
    """The path at the start of ``line`` (quoted when it has spaces, ``\\"`` inside) and the rest."""
    if not line.startswith('"'):
        path, _, rest = line.partition(" ")
        return path, rest
    out, i = [], 1
    while i < len(line):
        char = line[i]
        if char == "\\" and i + 1 < len(line) and line[i + 1] == '"':
            out.append('"')
            i += 2
            continue
        if char == '"':
            return "".join(out), line[i + 2:]
        out.append(char)
        i += 1
    return "".join(out), ""


def parse_description(text: str) -> dict[str, str]:
    """``rdsquashfs -d`` output -> {path: kind}; whiteouts (char device 0/0) have kind ``whiteout``."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        keyword, _, rest = line.partition(" ")
        if not rest:
            continue
        path, tail = _path_token(rest)
        if keyword == "nod":
            fields = tail.split()
            kind = "whiteout" if fields[-3:] == ["c", "0", "0"] else ("chardev" if "c" in fields else "blockdev")
        else:
            kind = _KINDS.get(keyword, keyword)
        entries[path.strip("/")] = kind
    return entries


def layer_entries(image: Path, digest: str) -> dict[str, str]:
    """Every entry of a squashfs layer (cached by its digest)."""
    with _lock:
        if digest in _cache:
            _cache.move_to_end(digest)
            return _cache[digest]
    result = run([require_tool("rdsquashfs", package="squashfs-tools-ng"), "-d", str(image)], timeout=600)
    entries = parse_description(result.text)
    with _lock:
        _cache[digest] = entries
        while len(_cache) > LISTING_CACHE:
            _cache.popitem(last=False)
    return entries


def merged(chain: list[tuple[Path, str]]) -> set[str]:
    """The paths a node sees with these layers stacked (base first): whiteouts remove a path and below."""
    present: set[str] = set()
    for image, digest in chain:
        for path, kind in layer_entries(image, digest).items():
            if kind == "whiteout":
                present = {p for p in present if p != path and not p.startswith(path + "/")}
            else:
                present.add(path)
    return present


def tar_entries(archive: Path, limits: Any) -> dict[str, str]:
    """The members of a queued upload (tar.zst), checked as a bake would check them, data skipped."""
    import zstandard

    from layerboot.overlays.tarscan import scan_tar

    entries: dict[str, str] = {}
    try:
        with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            for member, data in scan_tar(stream, limits):
                if data is not None:
                    while data.read(1 << 20):
                        pass
                entries[member.path] = member.kind
    except zstandard.ZstdError as err:
        raise LayerbootError(f"the upload is not readable zstd data ({err})") from None
    except FileNotFoundError:
        raise LayerbootError("the upload's file is gone from the queue") from None
    return entries


def classify(entries: dict[str, str], below: set[str]) -> list[Change]:
    changes = []
    for path, kind in sorted(entries.items()):
        if kind == "dir" or not path:
            continue
        action = "delete" if kind == "whiteout" else "change" if path in below else "add"
        changes.append(Change(path, action, kind))
    return changes


def upload_changes(upload: Any, profiles: Any, config: Any, allowed: frozenset[str] = frozenset()
                   ) -> dict[str, Any]:
    """What ``upload`` adds, changes and deletes against its profile's current generation."""
    from layerboot.overlays.tarscan import BakeLimits

    store = profiles.store
    current = profiles.current(upload.profile)
    chain = [(store.path(d), d) for d in current.chain if d != upload.layer]
    if upload.layer and store.paths.object_meta(upload.layer).exists():
        entries, source = layer_entries(store.path(upload.layer), upload.layer), f"layer {upload.layer[:12]}"
    elif upload.state in ("received", "retry", "failed") and Path(upload.path).is_file():
        entries, source = tar_entries(Path(upload.path), BakeLimits.from_config(config, allow=allowed)), \
            "the uploaded tar"
    else:
        raise LayerbootError(f"upload {upload.id} is {upload.state}: there is no file or layer left to list")
    changes = classify(entries, merged(chain))
    counts = {action: sum(1 for c in changes if c.action == action) for action in ("add", "change", "delete")}
    return {"upload": upload.id, "profile": upload.profile, "against_generation": current.number,
            "source": source, "counts": counts, "total": len(changes), "truncated": len(changes) > MAX_SHOWN,
            "changes": [c.to_dict() for c in changes[:MAX_SHOWN]]}
