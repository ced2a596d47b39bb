"""Named leases in the database: one holder at a time, for as long as it keeps renewing.

A lease row is (name, owner, until, acquired). :meth:`Leases.hold` takes a free or expired lease, or renews
one the caller holds, in one transaction (the row locked on PostgreSQL, the write lock on SQLite), so two
replicas never both believe they hold it; a holder that dies simply stops renewing and another one takes the
lease once ``until`` has passed. Times are the replicas' own clocks (keep them NTP-synchronised: a skew
shortens or lengthens a lease by as much). Used for the fleet monitor (``monitor``) and the store scrub
(``scrub``); the bake queue uses per-upload leases on its own rows (server/uploads.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Holder:
    owner: str
    until: float
    acquired: float


class Leases:
    def __init__(self, db: Any) -> None:
        self.db = db

    def hold(self, name: str, owner: str, ttl: float, now: float | None = None) -> bool:
        """Take lease ``name`` for ``owner`` (or renew it) for ``ttl`` seconds; False while another holds it."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            row = tx.one("SELECT owner, until FROM leases WHERE name = ?" + tx.for_update(), (name,))
            if row is None:
                return tx.execute("INSERT INTO leases (name, owner, until, acquired) VALUES (?, ?, ?, ?) "
                                  "ON CONFLICT (name) DO NOTHING", (name, owner, now + ttl, now)) == 1
            if row["owner"] == owner:
                tx.execute("UPDATE leases SET until = ? WHERE name = ?", (now + ttl, name))
                return True
            if row["until"] >= now:
                return False
            tx.execute("UPDATE leases SET owner = ?, until = ?, acquired = ? WHERE name = ?",
                       (owner, now + ttl, now, name))
            return True

    def release(self, name: str, owner: str) -> None:
        """Give the lease up at once (a clean stop), so another replica need not wait for it to run out."""
        self.db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def holder(self, name: str) -> Holder | None:
        row = self.db.one("SELECT owner, until, acquired FROM leases WHERE name = ?", (name,))
        return Holder(row["owner"], row["until"], row["acquired"]) if row else None
