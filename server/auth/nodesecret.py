"""Node secrets: each node's write credential (uploads, upload status, later heartbeats), stored as sha256.

A secret is ``lbs1.`` plus 192 random bits in hex. It is never put on a kernel command line and never handed
out to an anonymous client: the admin gets one from ``layerboot nodes register`` / ``nodes secret rotate``
(origin ``register``/``rotate``), a diskless node claims one at boot with its boot token and proof of its asset
key (origin ``claim``, see claim.py). A node may hold several at once, so a claim never invalidates a secret
in use: beyond ``CLAIMED_KEPT`` claimed secrets, only the oldest *never used* ones are forgotten (and of the
used ones, one per boot that uploaded, only the least recently used beyond ``CLAIMED_USED_KEPT``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass

from layerboot.errors import LayerbootError
from layerboot.server.nodes import normalize_mac

log = logging.getLogger("layerboot.server.auth")

PREFIX = "lbs1."
CLAIMED_KEPT = 16           # never-used claimed secrets per node; beyond, the oldest go
CLAIMED_USED_KEPT = 64      # used claimed secrets per node (one per boot that uploaded); beyond, the least recent
TOUCH_EVERY = 3600          # seconds between updates of a secret's last-use time


class ClaimRefused(LayerbootError):
    """A claim that must wait (``retry_after`` seconds) or cannot be stored."""

    def __init__(self, message: str, *, status: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_hex(24)


@dataclass(frozen=True)
class SecretRecord:
    hash: str
    mac: str
    origin: str            # register | rotate | claim | migrated
    created: float
    last_used: float | None


class NodeSecrets:
    """The node_secrets table (server/db.py); the same connection as the Registry."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, mac: str, origin: str, *, now: float | None = None) -> str:
        secret = new_secret()
        self.conn.execute("INSERT INTO node_secrets (hash, mac, origin, created) VALUES (?, ?, ?, ?)",
                          (secret_hash(secret), normalize_mac(mac), origin, time.time() if now is None else now))
        return secret

    def node_of(self, secret: str) -> str | None:
        """The MAC whose secret this is (its last-use time refreshed, best effort), or None."""
        digest = secret_hash(secret)
        row = self.conn.execute("SELECT mac, last_used FROM node_secrets WHERE hash = ?", (digest,)).fetchone()
        if row is None:
            return None
        now = time.time()
        if row["last_used"] is None or row["last_used"] < now - TOUCH_EVERY:
            try:
                self.conn.execute("UPDATE node_secrets SET last_used = ? WHERE hash = ?", (now, digest))
            except sqlite3.Error as err:    # a full disk must not turn a valid secret away
                log.warning("cannot record the use of a secret of %s: %s", row["mac"], err)
        return row["mac"]

    def list(self, mac: str) -> list[SecretRecord]:
        rows = self.conn.execute("SELECT * FROM node_secrets WHERE mac = ? ORDER BY created", (normalize_mac(mac),))
        return [SecretRecord(r["hash"], r["mac"], r["origin"], r["created"], r["last_used"]) for r in rows]

    def rotate(self, mac: str) -> str:
        """Forget every secret of ``mac`` and return a new one (origin ``rotate``)."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM node_secrets WHERE mac = ?", (normalize_mac(mac),))
            return self.add(mac, "rotate")

    def claim(self, mac: str, *, per_hour: int, now: float | None = None) -> str:
        """A new claimed secret for ``mac``; ClaimRefused when ``per_hour`` claims were made in the last hour.

        Claimed secrets beyond CLAIMED_KEPT are forgotten oldest first, but only those never used: a secret a
        running node uploads with stays valid, whatever is claimed after it.
        """
        mac = normalize_mac(mac)
        now = time.time() if now is None else now
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                recent = self.conn.execute(
                    "SELECT COUNT(*), MIN(created) FROM node_secrets WHERE mac = ? AND origin = 'claim' "
                    "AND created > ?", (mac, now - 3600)).fetchone()
                if per_hour and recent[0] >= per_hour:
                    wait = int(recent[1] + 3600 - now) + 1
                    raise ClaimRefused(f"node {mac} claimed {recent[0]} secrets in the last hour "
                                       f"(server.node_secret_claims_per_hour = {per_hour})", status=429,
                                       retry_after=wait)
                secret = self.add(mac, "claim", now=now)
                self.conn.execute(
                    "DELETE FROM node_secrets WHERE hash IN (SELECT hash FROM node_secrets WHERE mac = ? AND "
                    "origin = 'claim' AND last_used IS NULL ORDER BY created DESC LIMIT -1 OFFSET ?)",
                    (mac, CLAIMED_KEPT))
                self.conn.execute(
                    "DELETE FROM node_secrets WHERE hash IN (SELECT hash FROM node_secrets WHERE mac = ? AND "
                    "origin = 'claim' AND last_used IS NOT NULL ORDER BY last_used DESC LIMIT -1 OFFSET ?)",
                    (mac, CLAIMED_USED_KEPT))
        except sqlite3.Error as err:
            raise ClaimRefused(f"cannot record a secret for {mac}: {err}", status=503, retry_after=60) from None
        return secret
