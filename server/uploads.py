"""Upload records: every upload's state lives in the database, so a crash or restart loses nothing.

    receiving -> received -> baking -> baked | failed
                             baking -> retry -> baking     (a failure not caused by the upload)

* ``receiving``: a row exists before the first byte is written (HTTP) or before a completed SFTP file is moved
  in; the data goes to ``incoming/.queue/<id>.part`` and is renamed to ``<id>.tar.zst`` only when complete and
  fsynced. On restart a ``receiving`` row whose ``.tar.zst`` exists becomes ``received``; otherwise it was cut
  off mid-transfer: the part is deleted and the row marked failed (the HTTP client never got its 202).
* ``received``: complete on disk, waiting for a bake worker.
* ``baking``: a worker is on it. Baking publishes a layer only when complete (overlays.bake), so on restart a
  ``baking`` row simply goes back to ``received``. ``attempts`` counts the bakes started.
* ``owner`` and ``lease_until`` (``receiving`` and ``baking``): the replica working on it and until when its
  claim holds unless renewed (server/replica). Alone on a store, a daemon's start takes every such row over;
  with replicas only those whose lease has run out (their replica died), and a bake's outcome is recorded only
  while the claim is still the baker's (:meth:`UploadRecords.finish_bake`), so an upload is baked into the
  profile at most once.
* ``retry``: the last bake failed for a reason that is not the upload's content (a full or failing disk, a
  tool killed by a signal, an internal error): the file stays queued and is baked again at ``next_try``
  (exponential backoff, server.retry_initial .. server.retry_max); ``last_error`` says why.
* ``failed``: refused for its content (or cut off while receiving). Its file is kept until ``keep_until``
  (server.failed_upload_keep) for inspection, counted against the node's quota, then removed.
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

from layerboot.atomic import fsync_dir, in_use
from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.content import format_classes, parse_classes
from layerboot.overlays.layer import utc_now
from layerboot.overlays.leftovers import Leftover, tree_size
from layerboot.overlays.names import check_profile_name
from layerboot.paths import Paths
from layerboot.server.nodes import mac_dirname, normalize_mac

if TYPE_CHECKING:
    from layerboot.server.db import Database

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\.tar\.zst$")
ID_RE = re.compile(r"^[0-9]{14}-[0-9a-f]{8}$")
STATES = ("receiving", "received", "baking", "retry", "baked", "failed")
PENDING = ("receiving", "received", "baking", "retry")
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
    attempts: int = 0
    next_try: float | None = None      # epoch seconds, for state ``retry``
    last_error: str = ""
    keep_until: float | None = None    # epoch seconds: a failed upload's file is kept until then
    owner: str = ""                    # the replica receiving or baking it (server/replica), "" otherwise
    lease_until: float | None = None   # epoch seconds: the owner's claim lasts until then unless renewed

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Upload":
        return cls(**{key: row[key] for key in row.keys()})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def public_dict(self) -> dict[str, Any]:
        """For HTTP answers and ``uploads list --json``: without the server's own business (its file path, the
        replica holding the upload and its lease), with ``held``."""
        data = self.to_dict()
        for private in ("path", "owner", "lease_until"):
            data.pop(private, None)
        data["held"] = self.held
        return data

    @property
    def held(self) -> bool:
        return self.state == "baked" and self.generation is None


class UploadRecords:
    """The uploads table and per-profile policies; used by layerbootd and by ``layerboot uploads``."""

    def __init__(self, db: "Database", paths: Paths, *, default_policy: str = "hold", owner: str = "",
                 lease: float = 60.0) -> None:
        """``owner``: the replica id this process claims work as (server/replica); ``lease``: seconds a claim
        lasts unless renewed (server.replica_lease)."""
        self.db = db
        self.paths = paths
        self.default_policy = default_policy
        self.owner = owner
        self.lease = lease

    # -- rows --------------------------------------------------------------------------------------------
    def begin(self, mac: str, profile: str, name: str, *, via: str, size: int = 0) -> Upload:
        """Create a ``receiving`` row; the data goes to :meth:`part_path`, then :meth:`complete`."""
        upload_id = new_upload_id()
        path = queue_dir(self.paths) / f"{upload_id}.tar.zst"
        now = utc_now()
        self.db.execute(
            "INSERT INTO uploads (id, mac, profile, name, path, size, via, state, received, updated, owner, "
            "lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, 'receiving', ?, ?, ?, ?)",
            (upload_id, mac, profile, check_upload_name(name), str(path), size, via, now, now, self.owner,
             time.time() + self.lease))
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

    def listed(self, state: str | None = None) -> list[Upload]:
        """Uploads as ``layerboot uploads list`` and ``GET /api/v1/uploads`` give them, oldest first: all, those
        in ``state``, or ``held`` ones (baked, waiting for approval)."""
        if state and state not in (*STATES, "held"):
            raise LayerbootError(f"state must be one of {', '.join((*STATES, 'held'))}")
        uploads = self.list(state=None if state in (None, "", "held") else state)
        return [u for u in uploads if u.held] if state == "held" else uploads

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self.db.all("SELECT state, count(*) AS n FROM uploads GROUP BY state"):
            counts[row["state"]] = row["n"]
        counts["held"] = self.db.scalar(
            "SELECT count(*) FROM uploads WHERE state = 'baked' AND generation IS NULL")
        return counts

    def claim(self, now: float | None = None) -> Upload | None:
        """Take the oldest ``received`` upload, or ``retry`` one that is due, and mark it ``baking`` with this
        process as its owner for one lease (atomically).

        Safe from several threads or processes at once: on PostgreSQL a claimer skips the rows another one
        has locked (FOR UPDATE SKIP LOCKED); on SQLite BEGIN IMMEDIATE lets one claimer in at a time.
        """
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM uploads WHERE state = 'received' OR (state = 'retry' AND next_try <= ?) "
                         "ORDER BY received, id LIMIT 1" + tx.for_update(skip_locked=True), (now,))
            if row is None:
                return None
            tx.execute("UPDATE uploads SET state = 'baking', updated = ?, attempts = attempts + 1, "
                       "next_try = NULL, owner = ?, lease_until = ? WHERE id = ?",
                       (utc_now(), self.owner, now + self.lease, row["id"]))
        return self.get(row["id"])

    def renew(self, now: float | None = None) -> int:
        """Extend the lease of every upload this process is receiving or baking; returns how many."""
        now = time.time() if now is None else now
        return self.db.execute("UPDATE uploads SET lease_until = ? WHERE owner = ? AND state IN "
                               "('receiving', 'baking')", (now + self.lease, self.owner))

    def finish_bake(self, upload_id: str, digest: str, append: Any = None,
                    message: str = "") -> tuple[bool, int | None]:
        """Record a bake as done, fenced by the claim: only while the upload is still ``baking`` and ours (a
        replica whose lease ran out while it was stalled must not record a bake another one took over).

        ``append()`` (policy auto: add the layer to the profile, returns the generation) runs inside the same
        transaction, with the upload's row locked, so a bake is appended at most once. Returns (recorded,
        generation).
        """
        with self.db.transaction() as tx:
            row = tx.one("SELECT owner FROM uploads WHERE id = ? AND state = 'baking'" + tx.for_update(),
                         (upload_id,))
            if row is None or row["owner"] != self.owner:
                return False, None
            generation = append() if append is not None else None
            tx.execute("UPDATE uploads SET state = 'baked', updated = ?, layer = ?, generation = ?, message = ?, "
                       "lease_until = NULL WHERE id = ?", (utc_now(), digest, generation, message, upload_id))
        return True, generation

    def still_ours(self, upload_id: str) -> bool:
        """Whether this process still holds the claim on a ``baking`` upload."""
        return bool(self.db.scalar("SELECT count(*) FROM uploads WHERE id = ? AND state = 'baking' AND owner = ?",
                                   (upload_id, self.owner)))

    def next_due(self) -> float | None:
        """When the earliest ``retry`` upload is due (epoch seconds), or None."""
        return self.db.scalar("SELECT min(next_try) FROM uploads WHERE state = 'retry'")

    def baked(self, upload_id: str, layer: str, generation: int | None, message: str = "") -> None:
        self._set(upload_id, "baked", layer=layer, generation=generation, message=message)

    def failed(self, upload_id: str, message: str, *, keep: float = 0, fenced: bool = False) -> bool:
        """Mark an upload failed; its file (if any) is kept ``keep`` seconds for inspection, else removed.

        ``fenced``: a bake's own outcome, recorded only while the upload is still ``baking`` and ours (False
        when another replica took it over meanwhile: then nothing changes).
        """
        upload = self.get(upload_id)
        kept = keep > 0 and Path(upload.path).is_file()
        if not self._set(upload_id, "failed", fenced=fenced, message=message, next_try=None,
                         keep_until=time.time() + keep if kept else None, lease_until=None):
            return False
        if not kept:
            Path(upload.path).unlink(missing_ok=True)
        return True

    def retry(self, upload_id: str, error: str, *, delay: float, fenced: bool = False) -> bool:
        """A failure that is not the upload's fault: keep it queued and bake it again in ``delay`` seconds.
        ``fenced`` as for :meth:`failed`."""
        when = time.time() + delay
        return self._set(upload_id, "retry", fenced=fenced, next_try=when, last_error=error, lease_until=None,
                         message=f"retry at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(when))}")

    def retry_now(self, upload_id: str | None = None) -> int:
        """Make ``retry`` uploads (one, or all) due at once; returns how many."""
        query, args = "UPDATE uploads SET next_try = ? WHERE state = 'retry'", [time.time()]
        if upload_id is not None:
            self.get(upload_id)
            query += " AND id = ?"
            args.append(upload_id)
        return self.db.execute(query, tuple(args))

    def requeue_stuck(self, active: set[str]) -> int:
        """Put this process's ``baking`` rows no worker of it is on (their outcome could not be written) back
        in the queue. Other replicas' rows are theirs until their lease runs out (:meth:`take_over`)."""
        stuck = [u for u in self.list(state="baking", limit=1_000_000) if u.id not in active and u.owner == self.owner]
        for upload in stuck:
            self._set(upload.id, "retry", next_try=time.time(), message="re-queued",
                      last_error="the outcome of its last bake could not be recorded")
        return len(stuck)

    def take_over(self, now: float | None = None) -> list[tuple[Upload, str]]:
        """Uploads whose owner stopped renewing its claim (a replica killed or cut off) and whose lease has
        run out: ``baking`` ones go back to ``received``, ``receiving`` ones as :meth:`recover` says.
        Returns each with what was done."""
        now = time.time() if now is None else now
        rows = [Upload.from_row(r) for r in self.db.all(
            "SELECT * FROM uploads WHERE state IN ('receiving', 'baking') AND owner <> ? AND lease_until IS NOT NULL "
            "AND lease_until < ? ORDER BY received, id", (self.owner, now))]
        return [(upload, done) for upload in rows if (done := self._recover_one(upload, now))]

    def _recover_one(self, upload: Upload, now: float) -> str:
        """Re-queue or fail one abandoned ``receiving``/``baking`` row, unless someone renewed it meanwhile."""
        guard = "id = ? AND state = ? AND owner = ? AND (lease_until IS NULL OR lease_until < ?)"
        args = (upload.id, upload.state, upload.owner, now)
        if upload.state == "baking":
            changed = self.db.execute(f"UPDATE uploads SET state = 'received', updated = ?, message = ?, owner = '', "
                                      f"lease_until = NULL WHERE {guard}", (utc_now(), "re-queued: its bake was "
                                      "abandoned (the daemon that baked it stopped)", *args))
            return "re-queued its bake" if changed else ""
        if Path(upload.path).is_file():
            changed = self.db.execute(f"UPDATE uploads SET state = 'received', updated = ?, size = ?, owner = '', "
                                      f"lease_until = NULL WHERE {guard}",
                                      (utc_now(), Path(upload.path).stat().st_size, *args))
            return "queued the complete file" if changed else ""
        changed = self.db.execute(f"UPDATE uploads SET state = 'failed', updated = ?, message = ?, owner = '', "
                                  f"lease_until = NULL, next_try = NULL WHERE {guard}",
                                  (utc_now(), "interrupted while receiving (the daemon stopped); upload it again",
                                   *args))
        if changed:
            self.part_path(upload).unlink(missing_ok=True)
        return "failed it: cut off while receiving" if changed else ""

    def expire_failed(self, now: float | None = None) -> list[Upload]:
        """Remove the files of failed uploads whose inspection time is over; returns those uploads."""
        now = time.time() if now is None else now
        expired = [Upload.from_row(r) for r in self.db.all(
            "SELECT * FROM uploads WHERE state = 'failed' AND keep_until IS NOT NULL AND keep_until <= ?", (now,))]
        for upload in expired:
            Path(upload.path).unlink(missing_ok=True)
            self.db.execute("UPDATE uploads SET keep_until = NULL WHERE id = ?", (upload.id,))
        return expired

    def retained(self, mac: str) -> list[Upload]:
        """A node's uploads that still hold bytes on the server: pending, failed with a kept file, held."""
        return [Upload.from_row(r) for r in self.db.all(
            f"SELECT * FROM uploads WHERE mac = ? AND (state IN {PENDING} OR (state = 'failed' AND keep_until "
            "IS NOT NULL) OR (state = 'baked' AND generation IS NULL)) ORDER BY received, id", (mac,))]

    def _set(self, upload_id: str, state: str, *, fenced: bool = False, **fields: Any) -> bool:
        """Set an upload's state and fields; ``fenced``: only if it is ``baking`` and ours. True if it changed."""
        names = "".join(f", {key} = ?" for key in fields)
        fence, args = (" AND state = 'baking' AND owner = ?", (self.owner,)) if fenced else ("", ())
        return bool(self.db.execute(f"UPDATE uploads SET state = ?, updated = ?{names} WHERE id = ?{fence}",
                                    (state, utc_now(), *fields.values(), upload_id, *args)))

    def recover(self, *, alone: bool = True) -> tuple[int, int]:
        """At start: finish or fail ``receiving`` rows, re-queue ``baking`` ones, fail queued ones whose file
        vanished. Returns (re-queued, failed).

        ``alone`` (one layerbootd per store, holding the daemon lock): every such row was left by a process
        that is gone, whatever its lease says. With replicas, only rows whose lease has run out: the others
        belong to a replica that is working on them now.
        """
        requeued = failed = 0
        now = float("inf") if alone else time.time()
        for upload in [*self.list(state="receiving", limit=1_000_000), *self.list(state="baking", limit=1_000_000)]:
            if upload.owner == self.owner and not alone:
                continue
            done = self._recover_one(upload, now)
            failed += done.startswith("failed")
            requeued += bool(done) and not done.startswith("failed")
        for upload in [*self.list(state="received"), *self.list(state="retry")]:
            if not Path(upload.path).is_file():
                self.failed(upload.id, "its file vanished from the queue directory")
                failed += 1
        return requeued, failed

    def queue_leftovers(self) -> list[Leftover]:
        """Files in the queue directory no upload needs any more, and cut-off SFTP parts in nodes' areas.

        Call only while no layerbootd runs on the store (layerbootd itself, at its start, holding its lock).
        """
        found = []
        directory = queue_dir(self.paths)
        if directory.is_dir():
            wanted = {row["path"] for row in self.db.all(
                f"SELECT path FROM uploads WHERE state IN {PENDING} OR (state = 'failed' AND keep_until IS NOT NULL)")}
            receiving = {str(self.part_path(u)) for u in self.list(state="receiving", limit=1_000_000)}
            for path in sorted(directory.iterdir()):
                if str(path) in wanted or str(path) in receiving:
                    continue
                found.append(Leftover("queue file", path, tree_size(path), "no pending upload needs it"))
        if self.paths.incoming.is_dir():
            for part in sorted(self.paths.incoming.glob("*/.*.part")):
                if part.parent.name != QUEUE_DIR and not in_use(part):
                    found.append(Leftover("sftp part", part, tree_size(part), "a transfer that was cut off"))
            registered = {row["mac"] for row in self.db.all("SELECT mac FROM nodes")}
            for area in sorted(self.paths.incoming.iterdir()):
                try:
                    mac = normalize_mac(area.name)
                except LayerbootError:
                    continue
                if area.is_dir() and mac not in registered:
                    for path in sorted(area.iterdir()):
                        if not path.name.endswith(".part"):
                            found.append(Leftover("sftp upload", path, tree_size(path),
                                                  f"node {mac} is not registered (any more)"))
        return found

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

    def reject(self, upload_id: str, profiles: Any = None) -> Upload:
        """Drop a held upload (never appended; with ``profiles``, its layer is removed from the store unless
        something else uses it), or one waiting in the queue (its file is removed)."""
        upload = self.get(upload_id)
        if upload.held:
            self.failed(upload.id, "rejected by the admin")
            if profiles is not None and upload.layer:
                others = {row["layer"] for row in self.db.all(
                    "SELECT layer FROM uploads WHERE layer = ? AND id != ? AND state = 'baked'",
                    (upload.layer, upload.id))}
                if profiles.drop_unused_layer(upload.layer, keep=others):
                    self._set(upload.id, "failed", message="rejected by the admin; its layer was removed")
            return self.get(upload_id)
        changed = self.db.execute("UPDATE uploads SET state = 'failed', updated = ?, message = ?, next_try = NULL "
                                  "WHERE id = ? AND state IN ('received', 'retry')",
                                  (utc_now(), "rejected by the admin", upload.id))
        if not changed:
            raise LayerbootError(f"upload {upload_id} is {upload.state}; only uploads waiting in the queue "
                                 "(received, retry) or held for approval can be rejected")
        Path(upload.path).unlink(missing_ok=True)
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
