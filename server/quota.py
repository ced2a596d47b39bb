"""Per-node upload quota: every byte the server keeps for a node counts, and new uploads stop at the limit.

A node's *retained* uploads are those still holding bytes on the server:

* pending: ``receiving`` (the bytes received so far), ``received``, ``baking``, ``retry`` — the queued file;
* failed, while its file is kept for inspection (server.failed_upload_keep) — the file;
* held: baked and waiting for ``layerboot uploads approve`` — the layer's size in the store;
* files in its SFTP area (``incoming/<mac>/``) not yet moved into the queue, parts included.

``server.node_max_uploads`` bounds how many, ``server.node_max_bytes`` how many bytes (0: no limit). A new
upload beyond either is refused with 507 Insufficient Storage (HTTP) or an SFTP failure, before a byte of it
is stored; an upload that grows past the byte quota while it streams is cut off the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.overlays.leftovers import tree_size
from layerboot.server.uploads import UploadRecords, node_dir


class QuotaExceeded(LayerbootError):
    """A node keeps too many uploads or bytes on the server: HTTP 507."""

    http_status = 507


@dataclass
class Usage:
    mac: str
    pending: int = 0
    pending_bytes: int = 0
    failed: int = 0
    failed_bytes: int = 0
    held: int = 0
    held_bytes: int = 0
    area: int = 0              # files in the node's SFTP area
    area_bytes: int = 0
    ids: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.pending + self.failed + self.held + self.area

    @property
    def bytes(self) -> int:
        return self.pending_bytes + self.failed_bytes + self.held_bytes + self.area_bytes

    def summary(self) -> str:
        return (f"{self.count} upload(s), {self.bytes} bytes: {self.pending} queued, {self.failed} failed "
                f"(kept for inspection), {self.held} held for approval, {self.area} in its SFTP area")

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "bytes": self.bytes, "queued": self.pending, "failed": self.failed,
                "held": self.held, "sftp_area": self.area}


def node_usage(records: UploadRecords, store: Any, mac: str, *, inflight: dict[str, int] | None = None) -> Usage:
    """What ``mac`` retains on the server now. ``inflight``: bytes received so far per ``receiving`` upload id."""
    usage = Usage(mac)
    for upload in records.retained(mac):
        usage.ids.append(upload.id)
        if upload.state == "failed":
            usage.failed += 1
            usage.failed_bytes += upload.size
        elif upload.held:
            usage.held += 1
            usage.held_bytes += _layer_size(store, upload.layer)
        else:
            usage.pending += 1
            usage.pending_bytes += (inflight or {}).get(upload.id, upload.size)
    area = node_dir(records.paths, mac)
    if area.is_dir():
        for path in area.iterdir():
            usage.area += 1
            usage.area_bytes += tree_size(path)
    return usage


def _layer_size(store: Any, digest: str | None) -> int:
    if not digest:
        return 0
    try:
        return int(store.get(digest).size)
    except LayerbootError:
        return 0


def room(usage: Usage, config: Any) -> int | None:
    """Bytes the node may still upload (None: no byte limit). Raises QuotaExceeded when it may not start one."""
    max_uploads, max_bytes = config.server_node_max_uploads, config.server_node_max_bytes
    if max_uploads and usage.count >= max_uploads:
        raise QuotaExceeded(f"node {usage.mac} already keeps {usage.summary()}; its quota is {max_uploads} "
                            "upload(s) (server.node_max_uploads)", hint=HINT)
    if not max_bytes:
        return None
    left = max_bytes - usage.bytes
    if left <= 0:
        raise QuotaExceeded(f"node {usage.mac} already keeps {usage.summary()}; its quota is {max_bytes} bytes "
                            "(server.node_max_bytes)", hint=HINT)
    return left


def over(mac: str, size: int, left: int | None) -> QuotaExceeded | None:
    """The error for an upload of ``size`` bytes when only ``left`` bytes of quota remain (None if it fits)."""
    if left is None or size <= left:
        return None
    return QuotaExceeded(f"upload of {size}+ bytes is over the {left} bytes left in the quota of node {mac} "
                         "(server.node_max_bytes)", hint=HINT)


HINT = ("wait for its queued uploads to bake; approve or reject held ones ('layerboot uploads list'); "
        "failed uploads' files expire after server.failed_upload_keep")

