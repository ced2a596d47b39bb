"""The node registry: MAC -> profile, asset key, SSH keys and boot reports (server/db.py holds the tables).

Credentials live next door in server/auth/: boot tokens are stateless (only ``tokens_not_before`` here revokes
them), node secrets have their own table (auth/nodesecret.py). ``register`` makes a node's first secret.

On a PXE network the MAC is what a node says it is, as with DHCP: whoever can fetch ``/boot/<mac>.ipxe`` gets
that MAC's read-only boot token. Writing (uploads) needs the node secret, which is never handed out for a MAC
alone unless the admin opts in (server.node_secret_claim = "mac"); see docs/security.md.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.layer import utc_now
from layerboot.overlays.names import check_profile_name
from layerboot.safetext import printable
from layerboot.server.db.errors import DatabaseError

log = logging.getLogger("layerboot.server.nodes")

if TYPE_CHECKING:
    from layerboot.server.db import Database

log = logging.getLogger("layerboot.server.nodes")

MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
UUID_RE = re.compile(r"^[0-9a-f][0-9a-f-]{7,63}$")
EVENTS_KEPT = 200
STAGE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")     # fullmatch: '$' would let a trailing newline in
MAX_TIMINGS = 32
MAX_MESSAGE = 2000            # characters of an event message kept (longer ones are cut)
MAX_EVENT_INT = 2 ** 53 - 1   # generation and serial: what JSON (I-JSON) and SQLite both hold exactly
MAX_SECONDS = 1e9             # elapsed and timings: about 31 years


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
    if not MAC_RE.fullmatch(value):
        raise LayerbootError(f"{text[:40]!r} is not a MAC address", hint="write it like 52:54:00:12:34:56")
    digits = value.replace(":", "").replace("-", "")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def mac_dirname(mac: str) -> str:
    """A MAC as a directory name (no colons, so it is also safe in scp/sftp paths)."""
    return normalize_mac(mac).replace(":", "-")


def normalize_asset_key(text: str) -> str:
    """An asset key as stage1 reads it (initrd/stage1/claim.py): ``<product_uuid>:<product_serial>`` from the
    node's /sys/class/dmi/id, lowercased; ``layerboot asset-key`` prints it on the node. The serial may be
    empty (``UUID:``). Placeholder UUIDs that firmware ships on many boards (all 0 or all F) are refused."""
    value = text.strip().lower()
    uuid, sep, serial = value.partition(":")
    hint = ("run 'layerboot asset-key' as root on the node: it prints PRODUCT_UUID:PRODUCT_SERIAL from "
            "/sys/class/dmi/id (an empty serial is written UUID:)")
    if not sep or not UUID_RE.match(uuid):
        raise LayerbootError(f"{printable(text[:80])!r} is not an asset key", hint=hint)
    if len(serial) > 128 or not all(" " <= c <= "~" for c in serial) or serial != serial.strip():
        raise LayerbootError(f"the serial part of asset key {printable(value[:80])!r} is not printable ASCII",
                             hint=hint)
    digits = {c for c in uuid if c != "-"}
    if digits <= {"0"} or digits <= {"f"}:
        raise LayerbootError(f"{uuid} is a placeholder UUID that many machines share, not an asset key",
                             hint="set the node's real SMBIOS system UUID in its firmware, or leave it out")
    return value


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
    asset_key: str | None = None       # what a claim must prove (DMI "uuid:serial"); None: no claims
    tokens_not_before: int = 0         # boot tokens issued at or before this Unix time are refused
    good_generation: int | None = None     # the generation it last ran well on (a heartbeat reported it)
    pinned_generation: int | None = None   # boot this generation of its profile, not the newest (monitor/pins.py)
    pin_reason: str = ""
    name: str | None = None            # its host name, for a named node (server/fleet); None: known by MAC only
    cluster: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Node":
        return cls(mac=row["mac"], profile=row["profile"], auto=bool(row["auto"]), created=row["created"],
                   last_seen=row["last_seen"], last_stage=row["last_stage"],
                   last_ok=None if row["last_ok"] is None else bool(row["last_ok"]),
                   last_generation=row["last_generation"], last_serial=row["last_serial"],
                   last_message=row["last_message"], failures=row["failures"], boots=row["boots"],
                   asset_key=row["asset_key"], tokens_not_before=row["tokens_not_before"],
                   good_generation=row["good_generation"], pinned_generation=row["pinned_generation"],
                   pin_reason=row["pin_reason"], name=row.get("name"), cluster=row.get("cluster") or "")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def public_dict(self) -> dict[str, Any]:
        """For HTTP answers: whether an asset key is set, not the key itself."""
        data = self.to_dict()
        data["asset_key"] = self.asset_key is not None
        return data


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

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "ok": self.ok, "generation": self.generation, "serial": self.serial,
                "elapsed": self.elapsed, "message": self.message, "time": self.time, "timings": dict(self.timings)}

    @classmethod
    def from_json(cls, data: Any) -> "Event":
        """Check a posted report (parsed by layerboot.strictjson) field by field; a bad one is a one-line error
        naming the field. Numbers must be in range and finite, so every stored event is served back as JSON."""
        if not isinstance(data, dict):
            raise LayerbootError("a boot event is a JSON object {stage, ok, generation, serial, elapsed, message}")
        stage = data.get("stage")
        if not isinstance(stage, str) or not STAGE_RE.fullmatch(stage.lower()):
            raise LayerbootError("event 'stage' must be a short lowercase word (a-z, 0-9, '_', '.', '-')")
        ok = data.get("ok")
        if not isinstance(ok, bool):
            raise LayerbootError("event 'ok' must be true or false")
        numbers: dict[str, Any] = {}
        for key in ("generation", "serial"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= MAX_EVENT_INT):
                raise LayerbootError(f"event {key!r} must be an integer from 0 to {MAX_EVENT_INT}, or null")
            numbers[key] = value
        elapsed = data.get("elapsed")
        if elapsed is not None and not _seconds(elapsed):
            raise LayerbootError(f"event 'elapsed' must be a number of seconds from 0 to {MAX_SECONDS:.0f}, or null")
        message = data.get("message", "")
        if not isinstance(message, str):
            raise LayerbootError("event 'message' must be a string")
        timings = data.get("timings") or {}
        if not isinstance(timings, dict) or len(timings) > MAX_TIMINGS or not all(
                STAGE_RE.fullmatch(k) and _seconds(v) for k, v in timings.items()):
            raise LayerbootError(f"event 'timings' must be an object of at most {MAX_TIMINGS} step names (like "
                                 f"'stage') -> seconds from 0 to {MAX_SECONDS:.0f}")
        return cls(stage=stage.lower(), ok=ok, elapsed=None if elapsed is None else float(elapsed),
                   message=message[:MAX_MESSAGE], timings={k: float(v) for k, v in timings.items()}, **numbers)


def _seconds(value: Any) -> bool:
    """A finite, non-negative number of seconds below MAX_SECONDS (JSON true/false are not numbers)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and 0 <= value <= MAX_SECONDS)


class Registry:
    """Nodes and their reports, in the daemon's database (layerboot.server.db)."""

    def __init__(self, db: "Database") -> None:
        self.db = db

    # -- registration ------------------------------------------------------------------------------------
    def register(self, mac: str, profile: str, *, ssh_keys: tuple[str, ...] = (), auto: bool = False,
                 replace: bool = False, asset_key: str | None = None) -> tuple[Node, str | None]:
        """Register a node; returns it and its first node secret (None for an auto-registered node).

        Re-registering (``replace``) forgets the old record, its secrets, keys and reports, and revokes every
        boot token issued so far for the MAC (taking over an auto-registered record revokes nothing).
        """
        from layerboot.server.auth.nodesecret import NodeSecrets

        mac = normalize_mac(mac)
        check_profile_name(profile)
        key = normalize_asset_key(asset_key) if asset_key else None
        existing = self.find(mac)
        if existing and not (replace or existing.auto):
            raise LayerbootError(f"node {mac} is already registered (profile {existing.profile})",
                                 hint="use 'layerboot nodes set', or 'nodes register --replace' to start over")
        secret = None
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM nodes WHERE mac = ?", (mac,))
            tx.execute(
                "INSERT INTO nodes (mac, profile, auto, created, asset_key, tokens_not_before) "
                "VALUES (?, ?, ?, ?, ?, ?)", (mac, profile, int(auto), utc_now(), key,
                                               int(time.time()) if existing and not existing.auto else 0))
            for ssh_key in ssh_keys:
                tx.execute("INSERT INTO ssh_keys (mac, key) VALUES (?, ?) ON CONFLICT DO NOTHING", (mac, ssh_key))
            if not auto:
                secret = NodeSecrets(tx).add(mac, "register")
        return self.get(mac), secret

    def auto_register(self, mac: str, profile: str) -> Node | None:
        """Record an unknown MAC booting the default profile; best effort (None when the write fails)."""
        try:
            node, _ = self.register(mac, profile, auto=True)
        except DatabaseError as err:
            log.warning("could not record auto-registered node %s: %s", normalize_mac(mac), err.message)
            return None
        return node

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

    def set_asset_key(self, mac: str, asset_key: str | None) -> Node:
        """Set (or with None, clear) the asset key a node's secret claims must prove."""
        node = self.get(mac)
        key = normalize_asset_key(asset_key) if asset_key is not None else None
        self.db.execute("UPDATE nodes SET asset_key = ?, auto = 0 WHERE mac = ?", (key, node.mac))
        return self.get(mac)

    def revoke_tokens(self, mac: str, *, now: float | None = None) -> Node:
        """Refuse every boot token of ``mac`` issued until now (the node gets a new one at its next PXE boot)."""
        node = self.get(mac)
        self.db.execute("UPDATE nodes SET tokens_not_before = ? WHERE mac = ?",
                          (int(time.time() if now is None else now), node.mac))
        return self.get(mac)

    # -- ssh keys ----------------------------------------------------------------------------------------
    def add_ssh_key(self, mac: str, key: str) -> None:
        node = self.get(mac)
        self.db.execute("INSERT INTO ssh_keys (mac, key) VALUES (?, ?) ON CONFLICT DO NOTHING", (node.mac, key))

    def ssh_keys(self, mac: str) -> list[str]:
        return [r["key"] for r in self.db.all("SELECT key FROM ssh_keys WHERE mac = ? ORDER BY key",
                                              (normalize_mac(mac),))]

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
        """Count an iPXE script fetch as the start of a boot. Best effort: a failing write (full disk) is logged
        and the boot goes on, because booting must never need a disk write."""
        try:
            self.db.execute("UPDATE nodes SET last_seen = ?, last_stage = 'ipxe', last_ok = 1, "
                            "boots = boots + 1 WHERE mac = ?", (utc_now(), mac))
        except DatabaseError as err:
            log.warning("could not record the boot of %s: %s", mac, err.message)

    def events(self, mac: str, limit: int = 20) -> list[Event]:
        rows = self.db.all("SELECT * FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?", (normalize_mac(mac), limit))
        return [Event(stage=r["stage"], ok=bool(r["ok"]), generation=r["generation"], serial=r["serial"],
                      elapsed=r["elapsed"] if _seconds(r["elapsed"]) else None, message=r["message"], time=r["time"],
                      timings=_stored_timings(r["timings"])) for r in reversed(rows)]


def _stored_timings(text: str) -> dict[str, float]:
    """Timings as stored; versions before the range checks could store Infinity or NaN: those are dropped."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {k: float(v) for k, v in data.items() if _seconds(v)} if isinstance(data, dict) else {}
