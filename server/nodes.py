"""The node registry: MAC -> profile, per-node secrets (hashed), SSH keys and boot reports.

Two kinds of bearer token authenticate a node, and the database keeps only their sha256:

* the *registration token*, printed once by ``layerboot nodes register`` (for uploads from anywhere, e.g.
  ``layerboot upload``);
* *boot tokens*, minted by ``GET /boot/<mac>.ipxe`` and put on the kernel command line
  (``layerboot.token=``), so a diskless node that remembers nothing still proves which node it is. They
  expire ``server.boot_token_ttl`` seconds after their last use; the newest few per node stay valid.

Anyone who can fetch ``/boot/<mac>.ipxe`` gets a boot token for that MAC: on a PXE network the MAC is the
identity, exactly as with DHCP. The tokens stop one node reading another's manifest, layers or uploading
as it; they do not make the boot network trusted.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.layer import utc_now
from layerboot.overlays.names import check_profile_name

if TYPE_CHECKING:
    from layerboot.server.db import Database

MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
BOOT_TOKENS_KEPT = 8
TOKEN_REFRESH = 3600          # seconds between refreshes of a boot token's last-use time
EVENTS_KEPT = 200
STAGE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_TIMINGS = 32


class AuthError(LayerbootError):
    """A request that is not allowed: ``status`` is 401 (who are you?) or 403 (not yours)."""

    def __init__(self, message: str, *, status: int = 401, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def normalize_mac(text: str) -> str:
    """Return a MAC as iPXE prints ``${net0/mac}``: lowercase hex pairs joined by colons.

    Accepts colons, dashes or no separators, any case; anything else is a clear error.
    """
    value = text.strip().lower()
    if not MAC_RE.match(value):
        raise LayerbootError(f"{text!r} is not a MAC address", hint="write it like 52:54:00:12:34:56")
    digits = value.replace(":", "").replace("-", "")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def mac_dirname(mac: str) -> str:
    """A MAC as a directory name (no colons, so it is also safe in scp/sftp paths)."""
    return normalize_mac(mac).replace(":", "-")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A 192-bit secret in hex: safe in a URL, an iPXE script and a kernel command line without quoting."""
    return secrets.token_hex(24)


@dataclass(frozen=True)
class Node:
    mac: str
    profile: str
    auto: bool
    created: str
    last_seen: str | None = None
    last_stage: str | None = None
    last_ok: bool | None = None
    last_generation: int | None = None
    last_serial: int | None = None
    last_message: str | None = None
    failures: int = 0
    boots: int = 0
    good_generation: int | None = None     # the generation it last ran well on (a heartbeat reported it)
    pinned_generation: int | None = None   # boot this generation of its profile, not the newest (monitor/pins.py)
    pin_reason: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Node":
        return cls(mac=row["mac"], profile=row["profile"], auto=bool(row["auto"]), created=row["created"],
                   last_seen=row["last_seen"], last_stage=row["last_stage"],
                   last_ok=None if row["last_ok"] is None else bool(row["last_ok"]),
                   last_generation=row["last_generation"], last_serial=row["last_serial"],
                   last_message=row["last_message"], failures=row["failures"], boots=row["boots"],
                   good_generation=row["good_generation"], pinned_generation=row["pinned_generation"],
                   pin_reason=row["pin_reason"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Event:
    """One boot report from a node (POST /nodes/<mac>/events)."""

    stage: str
    ok: bool
    generation: int | None = None
    serial: int | None = None
    elapsed: float | None = None
    message: str = ""
    time: str = ""
    timings: dict[str, float] = field(default_factory=dict)   # seconds per boot step, as stage1 measured them

    @classmethod
    def from_json(cls, data: Any) -> "Event":
        """Check a posted report field by field; a bad one is a one-line error naming the field."""
        if not isinstance(data, dict):
            raise LayerbootError("a boot event is a JSON object {stage, ok, generation, serial, elapsed, message}")
        stage = data.get("stage")
        if isinstance(stage, str):
            stage = stage.lower()
        if not isinstance(stage, str) or not STAGE_RE.match(stage):
            raise LayerbootError("event 'stage' must be a short lowercase word (a-z, 0-9, '_', '.', '-')")
        ok = data.get("ok")
        if not isinstance(ok, bool):
            raise LayerbootError("event 'ok' must be true or false")
        numbers: dict[str, Any] = {}
        for key in ("generation", "serial"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise LayerbootError(f"event {key!r} must be a non-negative integer or null")
            numbers[key] = value
        elapsed = data.get("elapsed")
        if elapsed is not None and (isinstance(elapsed, bool) or not isinstance(elapsed, (int, float))):
            raise LayerbootError("event 'elapsed' must be a number of seconds or null")
        message = data.get("message", "")
        if not isinstance(message, str):
            raise LayerbootError("event 'message' must be a string")
        timings = data.get("timings") or {}
        if not isinstance(timings, dict) or len(timings) > MAX_TIMINGS or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in timings.items()):
            raise LayerbootError(f"event 'timings' must be an object of at most {MAX_TIMINGS} step names -> seconds")
        return cls(stage=stage, ok=ok, elapsed=None if elapsed is None else float(elapsed),
                   message=message[:2000], timings={k: float(v) for k, v in timings.items()}, **numbers)


class Registry:
    """Nodes, their secrets and their reports, in the daemon's database (layerboot.server.db)."""

    def __init__(self, db: "Database", *, boot_token_ttl: int = 30 * 86400) -> None:
        self.db = db
        self.boot_token_ttl = boot_token_ttl

    # -- registration ------------------------------------------------------------------------------------
    def register(self, mac: str, profile: str, *, ssh_keys: tuple[str, ...] = (), auto: bool = False,
                 replace: bool = False) -> tuple[Node, str | None]:
        """Register a node; returns it and its registration token (None for an auto-registered node)."""
        mac = normalize_mac(mac)
        check_profile_name(profile)
        token = None if auto else new_token()
        existing = self.find(mac)
        if existing and not (replace or existing.auto):
            raise LayerbootError(f"node {mac} is already registered (profile {existing.profile})",
                                 hint="use 'layerboot nodes set-profile', or 'nodes register --replace' for a new token")
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM nodes WHERE mac = ?", (mac,))
            tx.execute(
                "INSERT INTO nodes (mac, profile, token_hash, auto, created) VALUES (?, ?, ?, ?, ?)",
                (mac, profile, token_hash(token) if token else None, int(auto), utc_now()))
            for key in ssh_keys:
                tx.execute("INSERT INTO ssh_keys (mac, key) VALUES (?, ?) ON CONFLICT DO NOTHING", (mac, key))
        return self.get(mac), token

    def find(self, mac: str) -> Node | None:
        row = self.db.one("SELECT * FROM nodes WHERE mac = ?", (normalize_mac(mac),))
        return Node.from_row(row) if row else None

    def get(self, mac: str) -> Node:
        node = self.find(mac)
        if node is None:
            raise NotFoundError(f"no node {normalize_mac(mac)} is registered", hint="see 'layerboot nodes list'")
        return node

    def all(self) -> list[Node]:
        return [Node.from_row(r) for r in self.db.all("SELECT * FROM nodes ORDER BY mac")]

    def remove(self, mac: str) -> None:
        node = self.get(mac)
        self.db.execute("DELETE FROM nodes WHERE mac = ?", (node.mac,))

    def set_profile(self, mac: str, profile: str) -> Node:
        """Boot another profile; a generation pin (a generation of the old profile) and good generation go."""
        node = self.get(mac)
        with self.db.transaction() as tx:
            tx.execute("UPDATE nodes SET profile = ?, auto = 0, pinned_generation = NULL, pin_reason = '', "
                       "good_generation = NULL WHERE mac = ?", (check_profile_name(profile), node.mac))
            tx.execute("DELETE FROM pinned_manifests WHERE mac = ?", (node.mac,))
        return self.get(mac)

    # -- generation pins -----------------------------------------------------------------------------------
    def pin(self, mac: str, generation: int, reason: str = "") -> Node:
        """Serve ``generation`` of the node's profile instead of the newest (checked by the caller).

        The pinned manifest is signed afresh, with a new serial, the next time the node asks for it.
        """
        node = self.get(mac)
        with self.db.transaction() as tx:
            tx.execute("UPDATE nodes SET pinned_generation = ?, pin_reason = ? WHERE mac = ?",
                       (generation, reason[:500], node.mac))
            tx.execute("DELETE FROM pinned_manifests WHERE mac = ?", (node.mac,))
        return self.get(mac)

    def unpin(self, mac: str) -> Node:
        node = self.get(mac)
        with self.db.transaction() as tx:
            tx.execute("UPDATE nodes SET pinned_generation = NULL, pin_reason = '' WHERE mac = ?", (node.mac,))
            tx.execute("DELETE FROM pinned_manifests WHERE mac = ?", (node.mac,))
        return self.get(mac)

    # -- ssh keys ----------------------------------------------------------------------------------------
    def add_ssh_key(self, mac: str, key: str) -> None:
        node = self.get(mac)
        self.db.execute("INSERT INTO ssh_keys (mac, key) VALUES (?, ?) ON CONFLICT DO NOTHING", (node.mac, key))

    def ssh_keys(self, mac: str) -> list[str]:
        return [r["key"] for r in self.db.all("SELECT key FROM ssh_keys WHERE mac = ? ORDER BY key",
                                              (normalize_mac(mac),))]

    # -- tokens ------------------------------------------------------------------------------------------
    def issue_boot_token(self, mac: str) -> str:
        """Mint a boot token for the iPXE script; keeps only the newest few per node."""
        node = self.get(mac)
        token = new_token()
        now = time.time()
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO boot_tokens (hash, mac, created) VALUES (?, ?, ?)",
                       (token_hash(token), node.mac, now))
            tx.execute(
                "DELETE FROM boot_tokens WHERE mac = ? AND hash NOT IN "
                "(SELECT hash FROM boot_tokens WHERE mac = ? ORDER BY created DESC LIMIT ?)",
                (node.mac, node.mac, BOOT_TOKENS_KEPT))
            tx.execute("DELETE FROM boot_tokens WHERE created < ?", (now - self.boot_token_ttl,))
        return token

    def node_for_token(self, token: str) -> Node | None:
        """The node a token belongs to (registration or unexpired boot token), or None."""
        digest = token_hash(token)
        row = self.db.one("SELECT * FROM nodes WHERE token_hash = ?", (digest,))
        if row is None:
            now = time.time()
            row = self.db.one(
                "SELECT nodes.*, boot_tokens.created AS used FROM boot_tokens JOIN nodes USING (mac) "
                "WHERE hash = ? AND boot_tokens.created >= ?", (digest, now - self.boot_token_ttl))
            if row is not None and row["used"] < now - min(TOKEN_REFRESH, self.boot_token_ttl / 10):
                # sliding expiry: a node that keeps using its boot token (uptime of months) keeps it
                self.db.execute("UPDATE boot_tokens SET created = ? WHERE hash = ?", (now, digest))
        return Node.from_row(row) if row else None

    def authenticate(self, mac: str, token: str | None) -> Node:
        """The node ``mac`` if ``token`` is one of its tokens; AuthError 401/403 otherwise."""
        if not token:
            raise AuthError("this needs the node's token (Authorization: Bearer TOKEN)",
                            hint="the token is on the kernel command line as layerboot.token=")
        node = self.node_for_token(token)
        if node is None:
            raise AuthError("unknown or expired token")
        if node.mac != mac:
            raise AuthError(f"this token belongs to another node, not {mac}", status=403)
        return node

    # -- reports -----------------------------------------------------------------------------------------
    def record_event(self, mac: str, event: Event) -> None:
        now = utc_now()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO events (mac, time, stage, ok, generation, serial, elapsed, message, timings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mac, now, event.stage, int(event.ok), event.generation, event.serial, event.elapsed,
                 event.message, json.dumps(event.timings, sort_keys=True)))
            tx.execute(
                "UPDATE nodes SET last_seen = ?, last_stage = ?, last_ok = ?, last_message = ?, "
                "last_generation = COALESCE(?, last_generation), last_serial = COALESCE(?, last_serial), "
                "failures = failures + ? WHERE mac = ?",
                (now, event.stage, int(event.ok), event.message, event.generation, event.serial,
                 0 if event.ok else 1, mac))
            tx.execute(
                "DELETE FROM events WHERE mac = ? AND id NOT IN "
                "(SELECT id FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?)", (mac, mac, EVENTS_KEPT))

    def saw_boot(self, mac: str) -> None:
        """Count an iPXE script fetch as the start of a boot."""
        self.db.execute("UPDATE nodes SET last_seen = ?, last_stage = 'ipxe', last_ok = 1, boots = boots + 1 "
                        "WHERE mac = ?", (utc_now(), mac))

    def events(self, mac: str, limit: int = 20) -> list[Event]:
        rows = self.db.all("SELECT * FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?", (normalize_mac(mac), limit))
        return [Event(stage=r["stage"], ok=bool(r["ok"]), generation=r["generation"], serial=r["serial"],
                      elapsed=r["elapsed"], message=r["message"], time=r["time"], timings=json.loads(r["timings"]))
                for r in reversed(rows)]
