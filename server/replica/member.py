"""This layerbootd as one of the replicas of a store: who it is, and the loop that keeps its claims alive.

Every daemon has a replica id, ``HOST:PID:RANDOM``: the ``owner`` of the uploads it is receiving or baking.
Its claims last ``server.replica_lease`` seconds; :meth:`Replica.run` renews them (and its row in the
``replicas`` table) every third of that, so they only run out when the daemon is dead, stopped, or cut off
from the database for a whole lease. Another replica then takes the work over (server/queue.py's sweep).
Alone on a store (``server.replicas = false``) the same holds, except that the start-up takes over every
claim at once, since the exclusive store lock proves their owners are gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any

from layerboot.diskspace import storage_error

log = logging.getLogger("layerboot.server.replica")

FORGET_AFTER = 10            # leases after which a replica that stopped renewing leaves the replicas table


def new_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Replica:
    def __init__(self, db: Any, *, enabled: bool, lease: float, url: str = "") -> None:
        self.db = db
        self.enabled = enabled                 # server.replicas
        self.lease = float(lease)              # server.replica_lease
        self.id = new_replica_id()
        self.url = url
        self.renewers: list[Any] = []          # objects with renew(now) (the upload records)
        self._task: asyncio.Task[None] | None = None

    def register(self) -> None:
        """Add this replica's row (and forget replicas that stopped renewing long ago)."""
        now = time.time()
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM replicas WHERE seen < ?", (now - FORGET_AFTER * self.lease,))
            tx.execute("INSERT INTO replicas (id, host, pid, started, seen, url) VALUES (?, ?, ?, ?, ?, ?)",
                       (self.id, socket.gethostname(), os.getpid(), now, now, self.url))
        if self.enabled:
            log.info("replica %s: claims last %g s; other replicas: %s", self.id, self.lease,
                     ", ".join(r["id"] for r in self.others()) or "none yet")

    def others(self) -> list[Any]:
        """The other replicas that renewed within the last lease."""
        return self.db.all("SELECT * FROM replicas WHERE id <> ? AND seen >= ? ORDER BY started",
                           (self.id, time.time() - self.lease))

    def beat(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for renewer in self.renewers:
            renewer.renew(now)
        self.db.execute("UPDATE replicas SET seen = ? WHERE id = ?", (now, self.id))

    async def start(self) -> None:
        await asyncio.to_thread(self.register)
        self._task = asyncio.create_task(self.run(), name="layerboot-replica")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await asyncio.to_thread(self.beat)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the database is away: try again; claims may run out
                problem = storage_error(err)
                log.warning("replica %s: cannot renew its claims: %s", self.id,
                            problem.message if problem else getattr(err, "message", err))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.to_thread(self.db.execute, "DELETE FROM replicas WHERE id = ?", (self.id,))
        except Exception:  # noqa: BLE001 - the row is forgotten later anyway
            pass


def scrub_turn(replica: Replica, scrub_interval: float = 0) -> Any:
    """For keep_verified: None alone on a store; with replicas, a check that this replica holds the ``scrub``
    lease (two scrub intervals long, renewed at each scrub), so one replica re-hashes the shared store."""
    if not replica.enabled:
        return None
    from layerboot.server.replica.lease import Leases

    leases = Leases(replica.db)
    return lambda: leases.hold("scrub", replica.id, 2 * max(scrub_interval, replica.lease))
