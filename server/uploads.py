"""Upload records: every upload's state lives in the database, so a crash or restart loses nothing.

    receiving -> received -> baking -> baked | failed

* ``receiving``: a row exists before the first byte is written (HTTP) or before a completed SFTP file is moved
  in; the data goes to ``incoming/.queue/<id>.part`` and is renamed to ``<id>.tar.zst`` only when complete and
  fsynced. On restart a ``receiving`` row whose ``.tar.zst`` exists becomes ``received``; otherwise it was cut
  off mid-transfer: the part is deleted and the row marked failed (the HTTP client never got its 202).
* ``received``: complete on disk, waiting for a bake worker.
* ``baking``: a worker is on it. Baking publishes a layer only when complete (overlays.bake), so on restart a
  ``baking`` row simply goes back to ``received``.
* ``baked``: the layer digest is recorded; ``generation`` is set once it was appended to the profile (policy
  ``auto``, or ``layerboot uploads approve``), and NULL while held for an admin.

Each node's SFTP area is ``incoming/<mac with dashes>/``; a ``*.tar.zst`` there (not hidden, not ``.part``)
is complete and gets moved into the queue.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerboot.atomic import fsync_dir
from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.content import format_classes, parse_classes
from layerboot.overlays.layer import utc_now
from layerboot.overlays.names import check_profile_name
from layerboot.paths import Paths
from layerboot.server.nodes import mac_dirname

if TYPE_CHECKING:
    from layerboot.server.db import Database

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\.tar\.zst$")
ID_RE = re.compile(r"^[0-9]{14}-[0-9a-f]{8}$")
STATES = ("receiving", "received", "baking", "baked", "failed")
PENDING = ("receiving", "received", "baking")
POLICIES = ("auto", "hold")
QUEUE_DIR = ".queue"


def check_upload_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise LayerbootError(f"invalid upload name {name[:120]!r}",
                             hint="use NAME.tar.zst with letters, digits, '.', '_', '+', '-' (no paths)")
    return name


def new_upload_id() -> str:
    """Sortable by arrival: UTC time to the second, then randomness."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def queue_dir(paths: Paths) -> Path:
    return paths.incoming / QUEUE_DIR


def node_dir(paths: Paths, mac: str) -> Path:
    """A node's own upload area (its SFTP root)."""
    return paths.incoming / mac_dirname(mac)


def is_complete_name(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(".part") and name.endswith(".tar.zst")


@dataclass(frozen=True)
class Upload:
    id: str
    mac: str
    profile: str
    name: str
    path: str
    size: int
    via: str
    state: str
    received: str
    updated: str
    layer: str | None = None
    generation: int | None = None
    message: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Upload":
        return cls(**{key: row[key] for key in row.keys()})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def held(self) -> bool:
        return self.state == "baked" and self.generation is None


class UploadRecords:
    """The uploads table and per-profile policies; used by layerbootd and by ``layerboot uploads``."""

    def __init__(self, db: "Database", paths: Paths, *, default_policy: str = "hold") -> None:
        self.db = db
        self.paths = paths
        self.default_policy = default_policy

    # -- rows --------------------------------------------------------------------------------------------
    def begin(self, mac: str, profile: str, name: str, *, via: str, size: int = 0) -> Upload:
        """Create a ``receiving`` row; the data goes to :meth:`part_path`, then :meth:`complete`."""
        upload_id = new_upload_id()
        path = queue_dir(self.paths) / f"{upload_id}.tar.zst"
        now = utc_now()
        self.db.execute(
            "INSERT INTO uploads (id, mac, profile, name, path, size, via, state, received, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'receiving', ?, ?)",
            (upload_id, mac, profile, check_upload_name(name), str(path), size, via, now, now))
        return self.get(upload_id)

    @staticmethod
    def part_path(upload: Upload) -> Path:
        return Path(upload.path).with_suffix("").with_suffix(".part")

    def complete(self, upload: Upload, size: int) -> Upload:
        self._set(upload.id, "received", size=size)
        return self.get(upload.id)

    def get(self, upload_id: str) -> Upload:
        row = self.db.one("SELECT * FROM uploads WHERE id = ?", (upload_id,))
        if row is None:
            raise NotFoundError(f"no upload {upload_id[:40]!r}", hint="see 'layerboot uploads list'")
        return Upload.from_row(row)

    def list(self, *, state: str | None = None, mac: str | None = None, limit: int = 1000) -> list[Upload]:
        query, args = "SELECT * FROM uploads WHERE 1=1", []
        if state:
            query += " AND state = ?"
            args.append(state)
        if mac:
            query += " AND mac = ?"
            args.append(mac)
        query += " ORDER BY received, id LIMIT ?"
        args.append(limit)
        return [Upload.from_row(r) for r in self.db.all(query, args)]

    def pending(self, mac: str | None = None) -> int:
        """Uploads waiting for or in a bake (of one node when ``mac`` is given)."""
        if mac is None:
            return self.db.scalar(f"SELECT count(*) FROM uploads WHERE state IN {PENDING}")
        return self.db.scalar(f"SELECT count(*) FROM uploads WHERE state IN {PENDING} AND mac = ?", (mac,))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self.db.all("SELECT state, count(*) AS n FROM uploads GROUP BY state"):
            counts[row["state"]] = row["n"]
        counts["held"] = self.db.scalar(
            "SELECT count(*) FROM uploads WHERE state = 'baked' AND generation IS NULL")
        return counts

    def claim(self) -> Upload | None:
        """Take the oldest ``received`` upload and mark it ``baking`` (atomically).

        Safe from several threads or processes at once: on PostgreSQL a claimer skips the rows another one
        has locked (FOR UPDATE SKIP LOCKED); on SQLite BEGIN IMMEDIATE lets one claimer in at a time.
        """
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM uploads WHERE state = 'received' ORDER BY received, id "
                         "LIMIT 1" + tx.for_update(skip_locked=True))
            if row is None:
                return None
            tx.execute("UPDATE uploads SET state = 'baking', updated = ? WHERE id = ?",
                       (utc_now(), row["id"]))
        return self.get(row["id"])

    def baked(self, upload_id: str, layer: str, generation: int | None, message: str = "") -> None:
        self._set(upload_id, "baked", layer=layer, generation=generation, message=message)

    def failed(self, upload_id: str, message: str) -> None:
        self._set(upload_id, "failed", message=message)

    def _set(self, upload_id: str, state: str, **fields: Any) -> None:
        names = "".join(f", {key} = ?" for key in fields)
        self.db.execute(f"UPDATE uploads SET state = ?, updated = ?{names} WHERE id = ?",
                        (state, utc_now(), *fields.values(), upload_id))

    def recover(self) -> tuple[int, int]:
        """After a crash or restart: finish or fail ``receiving`` rows, re-queue ``baking`` ones.

        Returns (re-queued, failed).
        """
        requeued = failed = 0
        for upload in self.list(state="receiving"):
            if Path(upload.path).is_file():
                self._set(upload.id, "received", size=Path(upload.path).stat().st_size)
                requeued += 1
            else:
                self.part_path(upload).unlink(missing_ok=True)
                self.failed(upload.id, "interrupted while receiving (the daemon stopped); upload it again")
                failed += 1
        for upload in self.list(state="baking"):
            self._set(upload.id, "received", message="re-queued after a restart")
            requeued += 1
        for upload in self.list(state="received"):
            if not Path(upload.path).is_file():
                self.failed(upload.id, "its file vanished from the queue directory")
                failed += 1
        return requeued, failed

    # -- policy ------------------------------------------------------------------------------------------
    def policy(self, profile: str) -> str:
        row = self.db.one("SELECT policy FROM profile_policy WHERE profile = ?", (profile,))
        return row["policy"] if row else self.default_policy

    def set_policy(self, profile: str, policy: str) -> None:
        if policy not in POLICIES:
            raise LayerbootError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.db.execute("INSERT INTO profile_policy (profile, policy) VALUES (?, ?) "
                        "ON CONFLICT(profile) DO UPDATE SET policy = excluded.policy",
                        (check_profile_name(profile), policy))

    def allowed(self, profile: str) -> frozenset[str]:
        """The content classes (overlays.content.CLASSES) the profile's uploads may carry; none by default."""
        row = self.db.one("SELECT allow FROM profile_content_policy WHERE profile = ?", (profile,))
        return parse_classes([row["allow"]]) if row else frozenset()

    def set_allowed(self, profile: str, allow: frozenset[str]) -> None:
        self.db.execute("INSERT INTO profile_content_policy (profile, allow) VALUES (?, ?) "
                        "ON CONFLICT(profile) DO UPDATE SET allow = excluded.allow",
                        (check_profile_name(profile), format_classes(allow)))

    def approve(self, upload_id: str, profiles: Any) -> Upload:
        """Append a held upload's layer to its profile as a new generation."""
        upload = self.get(upload_id)
        if not upload.held:
            raise LayerbootError(f"upload {upload_id} is {upload.state}"
                                 + (f" and already in generation {upload.generation}" if upload.generation else "")
                                 + "; only baked uploads waiting for approval can be approved")
        gen = append_layer(profiles, upload.profile, upload.layer or "")
        self._set(upload.id, "baked", generation=gen, message="approved")
        return self.get(upload_id)

    def reject(self, upload_id: str) -> Upload:
        """Drop a held upload: it is never appended (its layer stays in the store, in no profile)."""
        upload = self.get(upload_id)
        if not upload.held:
            raise LayerbootError(f"upload {upload_id} is {upload.state}; only baked uploads waiting for approval "
                                 "can be rejected")
        self.failed(upload.id, "rejected by the admin")
        return self.get(upload_id)


def append_layer(profiles: Any, profile: str, digest: str) -> int:
    """Add a baked layer on top of the profile; idempotent (a re-bake after a crash finds it already there)."""
    for attempt in range(5):
        current = profiles.current(profile)
        if digest in current.layers:
            return current.number
        try:
            return profiles.add(profile, digest).number
        except LayerbootError as err:   # an admin changed the profile at the same moment: look again
            if "changed meanwhile" not in err.message or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def move_into_queue(source: Path, target: Path) -> None:
    """Rename a completed file into the queue and make the rename durable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    fsync_dir(target.parent)
    fsync_dir(source.parent)
