"""The Layer record: what the store knows about one immutable object (a squashfs layer or a boot file)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from layerboot import strictjson
from layerboot.errors import LayerbootError
from layerboot.overlays.names import check_digest
from layerboot.overlays.verity import VerityTree

KINDS = ("base", "overlay", "kernel", "initrd", "modules", "node")
# "modules": a kernel's /lib/modules/VERSION tree, stacked just above the base by the profile's kernel
# (Generation.modules), so a node can load drivers after switch_root (docs/hardware.md).
# "node": one node's per-node layer, rendered by layerbootd from templates (server/fleet/); it tops that node's
# per-node manifest only and is never part of a profile. Root-only in the store: it holds the node's host keys.
SQUASHFS_KINDS = ("base", "overlay", "modules", "node")
IMPORTABLE_KINDS = ("base", "overlay", "kernel", "initrd", "modules")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Layer:
    """One stored object.

    ``base`` is the digest of the base layer an overlay was made on; ``parent`` the top layer of the chain it
    was captured from (None for a base, a kernel or an initrd). ``fsverity`` is a squashfs layer's fs-verity
    digest (overlays/verity.py), which signed manifests carry for the nodes' caches; ``verity`` names its
    dm-verity hash tree (an object with no record of its own: this record names it) and root hash, for
    streaming and checked disks.
    """

    digest: str
    kind: str
    size: int
    created: str = field(default_factory=utc_now)
    source: str = ""
    base: str | None = None
    parent: str | None = None
    description: str = ""
    fsverity: str | None = None
    verity: VerityTree | None = None

    def __post_init__(self) -> None:
        if isinstance(self.verity, dict):      # read from JSON
            object.__setattr__(self, "verity", VerityTree.from_dict(self.verity))
        check_digest(self.digest)
        if self.fsverity is not None:
            check_digest(self.fsverity)
        if self.kind not in KINDS:
            raise LayerbootError(f"unknown layer kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        for ref in (self.base, self.parent):
            if ref is not None:
                check_digest(ref)

    @property
    def short(self) -> str:
        return self.digest[:12]

    @property
    def is_squashfs(self) -> bool:
        return self.kind in SQUASHFS_KINDS

    def to_dict(self) -> dict[str, Any]:
        """The record as ``layer show``, ``layer list --json`` and the API give it (``verity`` only when the layer
        has a dm-verity tree)."""
        data = asdict(self)
        if data["verity"] is None:
            del data["verity"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Layer":
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as err:
            raise LayerbootError(f"malformed layer record: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> "Layer":
        data = strictjson.loads(text, what="layer record")
        if not isinstance(data, dict):
            raise LayerbootError("layer record is not a JSON object")
        return cls.from_dict(data)
