"""The monitor inside layerbootd: an asyncio task that checks every node every ``monitor.interval`` seconds.

Each check: read nodes and heartbeats, turn them into the conditions that are bad now (detectors.py), open and
close incidents with flap damping (records.reconcile), announce what opened or closed on the type's ``notify``
channels, and start the ladder step of every open incident that is due. Steps run as their own tasks (a
slow BMC delays only its own incident); database work runs in worker threads; power, SMTP and webhooks are
async or in executors. Nothing here blocks the event loop, and an error in one check is logged and the next
check runs as usual. With replicas (server.replicas) only the one holding the ``monitor`` lease in the
database checks; the others stand by and take over within the lease when it stops renewing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from layerboot.server.monitor.config import check_channels
from layerboot.server.monitor.detectors import Limits, conditions
from layerboot.server.monitor.ladder import describe, run_step
from layerboot.server.monitor.model import Incident
from layerboot.server.monitor.notify import Message, Notifier, summarize
from layerboot.server.monitor.power import Targets, power_file
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.monitor.status import newest_generations
from layerboot.server.replica.lease import Leases

log = logging.getLogger("layerboot.monitor")

LEASE = "monitor"             # the database lease (server/replica/lease.py) replicas take turns on


class Monitor:
    def __init__(self, state: Any) -> None:
        config = state.config
        self.state = state
        self.records = MonitorRecords(state.registry.db)
        self.types = config.monitor_incidents
        self.limits = Limits.from_config(config)
        self.interval = max(1, int(config.monitor_interval))
        self.power_timeout = float(config.monitor_power_timeout)
        self.targets = Targets(power_file(config, state.paths))
        metrics = getattr(state, "metrics", None)
        self.notifier = Notifier(config, counter=metrics.notifications if metrics else None)
        self._power_counter = metrics.power_actions if metrics else None
        self._task: asyncio.Task[None] | None = None
        replica = getattr(state, "replica", None)
        self.replica = replica if replica is not None and replica.enabled else None   # server.replicas
        self.turn_ttl = max(replica.lease, 3.0 * self.interval) if self.replica is not None else 0.0
        self.running_here: bool | None = None   # with replicas: whether this one holds the monitor lease
        self._steps: dict[int, asyncio.Task[Any]] = {}
        self._messages: set[asyncio.Task[Any]] = set()
        check_channels(self.types, self.notifier.available())

    def count_power(self, driver: str, action: str, result: str) -> None:
        if self._power_counter is not None:
            self._power_counter.labels(driver, action, result).inc()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="layerboot-monitor")
        log.info("monitor: checking every %d s (heartbeat timeout %.0f s); power file %s", self.interval,
                 self.limits.heartbeat_timeout, self.targets.path)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._steps.values(), *self._messages) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.replica is not None and self.running_here:
            try:   # another replica takes over at its next check instead of waiting for the lease to run out
                await asyncio.to_thread(Leases(self.state.registry.db).release, LEASE, self.replica.id)
            except Exception:  # noqa: BLE001 - the lease runs out by itself
                pass

    async def my_turn(self) -> bool:
        """Alone: always. With replicas: whether this replica holds (takes, or renews) the monitor lease, so
        one replica at a time checks the fleet and climbs the ladders; it says so when that changes."""
        if self.replica is None:
            return True
        holds = await asyncio.to_thread(Leases(self.state.registry.db).hold, LEASE, self.replica.id, self.turn_ttl)
        if holds != self.running_here:
            if holds:
                log.info("monitor: this replica (%s) runs the monitor now", self.replica.id)
            else:
                holder = await asyncio.to_thread(Leases(self.state.registry.db).holder, LEASE)
                log.info("monitor: replica %s runs the monitor; this one stands by", holder.owner if holder else "?")
            self.running_here = holds
        return holds

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                if await self.my_turn():
                    await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad check must not end the monitor
                log.exception("monitor check failed; trying again in %d s", self.interval)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def check(self, now: float | None = None) -> None:
        """One pass over the fleet (bench/bench_monitor.py calls it directly)."""
        now = time.time() if now is None else now
        nodes, beats = await asyncio.to_thread(lambda: (self.state.registry.all(), self.records.heartbeats()))
        newest = newest_generations(self.state.profiles)
        bad = await asyncio.to_thread(conditions, nodes, beats, newest, self.limits, now)
        changes = await asyncio.to_thread(self.records.reconcile, bad, self.types, {n.mac for n in nodes}, now)
        for incident in changes.opened + changes.closed:   # messages go out on their own (a slow mail server
            task = asyncio.create_task(self._announce(incident))   # must not hold the next check up)
            self._messages.add(task)
            task.add_done_callback(self._messages.discard)
        for incident in await asyncio.to_thread(self.records.due, now):
            if incident.id not in self._steps:
                task = asyncio.create_task(self._step(incident), name=f"incident-{incident.id}")
                self._steps[incident.id] = task

    async def _step(self, incident: Incident) -> None:
        try:
            await run_step(self, incident)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("incident #%d: ladder step failed unexpectedly", incident.id)
        finally:
            self._steps.pop(incident.id, None)

    async def _announce(self, incident: Incident) -> None:
        """Tell the type's ``notify`` channels that ``incident`` opened or closed; note it in its history."""
        itype = self.types[incident.type]
        if incident.state != "closed":
            summary = incident.summary if len(incident.summary) <= 100 else incident.summary[:99] + "…"
            event, subject = "opened", f"[layerboot] {incident.type} on {incident.mac} opened: {summary}"
            line = f"incident #{incident.id} opened: {incident.type} on {incident.mac}: {incident.summary}"
        else:
            event, subject = "closed", f"[layerboot] {incident.type} on {incident.mac} closed ({incident.closed_by})"
            line = f"incident #{incident.id} closed ({incident.closed_by}): {incident.type} on {incident.mac}"
        try:
            history = await asyncio.to_thread(self.records.history, incident.id)
            outcomes = await self.notifier.send(itype.notify, Message(subject, describe(incident, itype, history),
                                                                      event, incident.to_dict(), line))
            await asyncio.to_thread(self.records.note, incident.id, "notify", summarize(outcomes), action=event,
                                    result="ok" if all(o.ok for o in outcomes) else "failed")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("incident #%d: announcing that it %s failed", incident.id, event)
