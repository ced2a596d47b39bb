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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.db.errors import DatabaseError
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
    """The node_secrets table, on the Registry's Database (or inside one of its transactions)."""

    def __init__(self, db: Any) -> None:
        self.db = db      # layerboot.server.db Database, or a Transaction of it

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A write transaction, or the one this object was made inside."""
        if hasattr(self.db, "transaction"):
            with self.db.transaction() as tx:
                yield tx
        else:
            yield self.db

    def add(self, mac: str, origin: str, *, now: float | None = None) -> str:
        secret = new_secret()
        self.db.execute("INSERT INTO node_secrets (hash, mac, origin, created) VALUES (?, ?, ?, ?)",
                        (secret_hash(secret), normalize_mac(mac), origin, time.time() if now is None else now))
        return secret

    def node_of(self, secret: str) -> str | None:
        """The MAC whose secret this is (its last-use time refreshed, best effort), or None."""
        digest = secret_hash(secret)
        row = self.db.one("SELECT mac, last_used FROM node_secrets WHERE hash = ?", (digest,))
        if row is None:
            return None
        now = time.time()
        if row["last_used"] is None or row["last_used"] < now - TOUCH_EVERY:
            try:
                self.db.execute("UPDATE node_secrets SET last_used = ? WHERE hash = ?", (now, digest))
            except DatabaseError as err:    # a full disk must not turn a valid secret away
                log.warning("cannot record the use of a secret of %s: %s", row["mac"], err.message)
        return row["mac"]

    def list(self, mac: str) -> list[SecretRecord]:
        rows = self.db.all("SELECT * FROM node_secrets WHERE mac = ? ORDER BY created", (normalize_mac(mac),))
        return [SecretRecord(r["hash"], r["mac"], r["origin"], r["created"], r["last_used"]) for r in rows]

    def rotate(self, mac: str) -> str:
        """Forget every secret of ``mac`` and return a new one (origin ``rotate``)."""
        with self._transaction() as tx:
            tx.execute("DELETE FROM node_secrets WHERE mac = ?", (normalize_mac(mac),))
            return NodeSecrets(tx).add(mac, "rotate")

    def claim(self, mac: str, *, per_hour: int, now: float | None = None) -> str:
        """A new claimed secret for ``mac``; ClaimRefused when ``per_hour`` claims were made in the last hour.

        Claimed secrets beyond CLAIMED_KEPT are forgotten oldest first, but only those never used: a secret a
        running node uploads with stays valid, whatever is claimed after it.
        """
        mac = normalize_mac(mac)
        now = time.time() if now is None else now
        try:
            with self._transaction() as tx:
                recent = tx.one("SELECT COUNT(*) AS n, MIN(created) AS oldest FROM node_secrets WHERE mac = ? "
                                "AND origin = 'claim' AND created > ?", (mac, now - 3600))
                if per_hour and recent["n"] >= per_hour:
                    wait = int(recent["oldest"] + 3600 - now) + 1
                    raise ClaimRefused(f"node {mac} claimed {recent['n']} secrets in the last hour "
                                       f"(server.node_secret_claims_per_hour = {per_hour})", status=429,
                                       retry_after=wait)
                secret = NodeSecrets(tx).add(mac, "claim", now=now)
                tx.execute(
                    "DELETE FROM node_secrets WHERE mac = ? AND origin = 'claim' AND last_used IS NULL AND hash "
                    "NOT IN (SELECT hash FROM node_secrets WHERE mac = ? AND origin = 'claim' AND last_used IS NULL "
                    "ORDER BY created DESC LIMIT ?)", (mac, mac, CLAIMED_KEPT))
                tx.execute(
                    "DELETE FROM node_secrets WHERE mac = ? AND origin = 'claim' AND last_used IS NOT NULL AND hash "
                    "NOT IN (SELECT hash FROM node_secrets WHERE mac = ? AND origin = 'claim' AND last_used IS NOT "
                    "NULL ORDER BY last_used DESC LIMIT ?)", (mac, mac, CLAIMED_USED_KEPT))
        except DatabaseError as err:
            raise ClaimRefused(f"cannot record a secret for {mac}: {err.message}", status=503,
                               retry_after=60) from None
        return secret
