"""The persistent bake queue: the uploads table is the queue, a few async workers drain it.

Workers bake in a thread pool (bake_archive spends its time in zstd and tar2sqfs child processes), so the
event loop keeps serving HTTP while a bake runs. ``server.bake_workers`` bakes run at once; at most
``server.queue_size`` uploads may be pending (receiving, received, baking or waiting to retry) before new ones
are refused with 503, and each node may keep at most its quota (server.quota). Completed files in the nodes'
SFTP areas are picked up by the watcher (watchdog) and by a sweep every few seconds, so a missed file-system
event only delays a bake.

A bake that fails for a reason other than the upload's content (server.retry) leaves the upload queued as
``retry`` and is tried again after a backoff; nothing is ever lost to a full or failing disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from layerboot.diskspace import storage_error
from layerboot.errors import LayerbootError
from layerboot.overlays import leftovers
from layerboot.overlays.bake import BakeLimits, bake_archive
from layerboot.server.db import DatabaseError
from layerboot.server.guard.limits import TooBusy
from layerboot.server.nodes import normalize_mac
from layerboot.server.quota import node_usage, room
from layerboot.server.retry import backoff, classify
from layerboot.server.uploads import (UploadRecords, append_layer, is_complete_name, move_into_queue, queue_dir)

log = logging.getLogger("layerboot.server.queue")

SWEEP_SECONDS = 5.0
CLEANUP_SECONDS = 600.0      # with replicas: how often crash leftovers are looked for again (not only at start)


class QueueFull(LayerbootError):
    http_status = 503


class Uploads:
    """Upload admission, recovery after restart, and the bake workers."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.paths = state.paths
        self.config = state.config
        replica = getattr(state, "replica", None)
        self.replicas = bool(replica is not None and replica.enabled)   # server.replicas: others share the queue
        self.records = UploadRecords(state.registry.db, state.paths, default_policy=state.config.server_upload_policy,
                                     owner=replica.id if replica is not None else "",
                                     lease=float(state.config.server_replica_lease))
        self.next_cleanup = time.monotonic() + CLEANUP_SECONDS
        self.wake = asyncio.Event()
        self.append_lock = asyncio.Lock()
        self.workers: list[asyncio.Task[None]] = []
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.config.server_bake_workers),
                                       thread_name_prefix="bake")
        self.watcher: Any = None
        self.sweeper: asyncio.Task[None] | None = None
        self.inflight: dict[str, int] = {}   # upload id -> bytes received so far (uploads in 'receiving')
        self.active: set[str] = set()        # uploads a worker of this process is baking
        self.ignored: set[Path] = set()      # files in areas of nodes that are not registered

    def reconfigure(self, config: Any) -> None:
        """A reloaded config (SIGHUP): new bake limits, threads, queue size and default policy; the number of
        workers stays until a restart."""
        self.config = config
        self.records.default_policy = config.server_upload_policy

    # -- life cycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Clean what a crash left, recover the queue, start the workers (the caller holds the daemon lock:
        alone, or shared with the other replicas, whose work in progress is left alone)."""
        queue_dir(self.paths).mkdir(parents=True, exist_ok=True)
        self.clean_leftovers()
        requeued, failed = self.records.recover(alone=not self.replicas)
        if requeued or failed:
            log.info("recovered the upload queue: %d re-queued, %d failed", requeued, failed)
        self.records.expire_failed()
        self.sweep()
        self.workers = [asyncio.create_task(self._worker(n)) for n in range(max(1, self.config.server_bake_workers))]
        self.sweeper = asyncio.create_task(self._sweep_forever())
        try:
            from layerboot.server.watch import start_watcher
            self.watcher = start_watcher(self.paths.incoming, asyncio.get_running_loop(), self.notice)
        except Exception as err:  # the periodic sweep still works without inotify
            log.warning("cannot watch %s (%s); relying on the %ds sweep", self.paths.incoming, err,
                        int(SWEEP_SECONDS))
        self.wake.set()

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for task in [*self.workers, *([self.sweeper] if self.sweeper else [])]:
            task.cancel()
        await asyncio.gather(*self.workers, *([self.sweeper] if self.sweeper else []), return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def clean_leftovers(self) -> None:
        """Remove what a killed process left in the store and the queue (overlays.leftovers), and log it.

        With replicas, temp files and scratch are removed only when nobody holds them (as always) *and* they
        have not changed for two leases, in case the shared filesystem does not carry another host's flock.
        """
        min_age = 2 * self.records.lease if self.replicas else 0.0
        found, removed = leftovers.sweep(self.paths, repair=True, min_age=min_age)
        queue = [item for item in self.records.queue_leftovers() if leftovers.age(item.path) >= min_age]
        found += queue
        removed += [item for item in queue if leftovers.remove(item)]
        for item in found:
            log.warning("%s %s", "removed" if item in removed else "cannot remove", item.describe(self.paths.root))
        if removed:
            log.warning("start-up clean-up: removed %d leftover(s) of an interrupted run (%.1f MB)",
                        len(removed), sum(item.size for item in removed) / 1e6)

    # -- admission ---------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return self.records.counts()

    def admit(self, mac: str | None = None) -> int | None:
        """Refuse a new upload when the queue is full (QueueFull: 503), when node ``mac`` has its share of it
        waiting already (TooBusy: 429, so one node cannot fill the queue for every other), or when the node is
        at its quota (507).

        Returns the bytes the node may still upload (None: no byte limit).
        """
        pending = self.records.pending()
        if pending >= self.config.server_queue_size:
            raise QueueFull(f"the bake queue is full ({pending} uploads waiting); try again later",
                            hint="raise server.queue_size or server.bake_workers")
        if mac is None:
            return None
        share = self.config.server_max_queued_per_node
        if share and self.records.pending(mac) >= share:
            raise TooBusy(f"node {mac} has {share} uploads waiting for a bake already; try again when one is "
                          "baked", retry_after=30, hint="the limit is server.max_queued_per_node")
        return room(self.usage(mac), self.config)

    def usage(self, mac: str) -> Any:
        return node_usage(self.records, self.state.store, mac, inflight=self.inflight)

    def notice(self, path: Path) -> None:
        """A file appeared or was renamed in incoming/ (called on the loop by the watcher)."""
        area = path.parent
        if area.parent == self.paths.incoming and not area.name.startswith(".") and is_complete_name(path.name):
            self.take_sftp_file(path)

    def sweep(self) -> None:
        for area in sorted(self.paths.incoming.iterdir()):
            if not area.is_dir() or area.name.startswith("."):
                continue
            for path in sorted(area.iterdir()):
                if is_complete_name(path.name) and path.is_file():
                    self.take_sftp_file(path)

    def take_sftp_file(self, path: Path) -> None:
        """Move a completed file from a node's area into the queue (unless the queue is full).

        Its bytes were counted against the node's quota while they were written (server.sftp). Replicas all
        see the file: the one that gets the file's database lock takes it, the others leave it.
        """
        try:
            with self.records.db.exclusive(f"layerboot-sftp:{path}") as mine:
                if mine and path.is_file():
                    self._take_sftp_file(path)
        except DatabaseError:
            return   # stays in the node's area; a later sweep takes it

    def _take_sftp_file(self, path: Path) -> None:
        try:
            mac = normalize_mac(path.parent.name)
            node = self.state.registry.find(mac)
            if node is None:
                if path not in self.ignored:   # once, not at every sweep; removed at the next start
                    self.ignored.add(path)
                    log.warning("ignoring %s: no registered node %s", path, mac)
                return
            if not path.is_file():
                return
            self.admit()
        except (QueueFull, DatabaseError):
            return   # stays in the node's area; a later sweep takes it
        except LayerbootError as err:
            log.warning("ignoring %s: %s", path, err.message)
            return
        try:
            upload = self.records.begin(mac, node.profile, path.name, via="sftp", size=path.stat().st_size)
        except DatabaseError as err:   # not the file's fault: it stays in the node's area for a later sweep
            log.warning("cannot queue %s now: %s", path, err.message)
            return
        except LayerbootError as err:
            log.warning("refusing %s: %s", path, err.message)
            path.unlink(missing_ok=True)
            return
        try:
            move_into_queue(path, Path(upload.path))
        except FileNotFoundError:
            self.records.failed(upload.id, "the file vanished before it could be queued")
            return
        self.records.complete(upload, Path(upload.path).stat().st_size)
        log.info("upload %s from %s via sftp: %s (%d bytes) queued", upload.id, mac, path.name, upload.size)
        self.wake.set()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self.sweep()
                for upload in self.records.expire_failed():
                    log.info("upload %s: removed the file of the refused upload (kept %ds for inspection)",
                             upload.id, self.config.server_failed_upload_keep)
                stuck = self.records.requeue_stuck(self.active)
                if stuck:
                    log.warning("re-queued %d upload(s) whose bake outcome could not be recorded", stuck)
                for upload, done in self.records.take_over():
                    log.warning("upload %s: %s stopped renewing its claim (lease over since %.0f s): %s",
                                upload.id, upload.owner or "a daemon", time.time() - (upload.lease_until or 0), done)
                if self.replicas and time.monotonic() >= self.next_cleanup:
                    self.next_cleanup = time.monotonic() + CLEANUP_SECONDS
                    self.clean_leftovers()
            except Exception as err:   # a full disk or a failing sqlite write: try again next time
                problem = storage_error(err)
                log.warning("queue sweep failed: %s", problem.message if problem else err)
            self.wake.set()   # retries that came due, 'layerboot uploads retry' from the CLI

    # -- baking ------------------------------------------------------------------------------------------
    async def _worker(self, number: int) -> None:
        while True:
            await self.wake.wait()
            try:
                upload = self.records.claim()
            except Exception as err:   # the database cannot be written (full disk): wait for the next sweep
                problem = storage_error(err)
                log.error("cannot take an upload from the queue: %s", problem.message if problem else err)
                self.wake.clear()
                continue
            if upload is None:
                self.wake.clear()
                await self._sleep_until_due()
                continue
            self.wake.set()   # let a sibling look for more work
            self.active.add(upload.id)
            try:
                await self._bake_one(upload)
            finally:
                self.active.discard(upload.id)

    async def _sleep_until_due(self) -> None:
        due = self.records.next_due()
        if due is None:
            return
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=max(0.05, due - time.time()))
        except asyncio.TimeoutError:
            self.wake.set()

    async def _bake_one(self, upload: Any) -> None:
        loop = asyncio.get_running_loop()
        log.info("baking upload %s (%s from %s, profile %s, attempt %d)", upload.id, upload.name, upload.mac,
                 upload.profile, upload.attempts)
        started = time.monotonic()
        try:
            allow = self.records.allowed(upload.profile)   # read here: the database stays on the loop thread
            digest = await loop.run_in_executor(self.pool, self._bake, upload, allow)
            auto = self.records.policy(upload.profile) == "auto"
            append = (lambda: append_layer(self.state.profiles, upload.profile, digest)) if auto else None
            async with self.append_lock:   # one new generation at a time (across replicas: the row lock)
                recorded, generation = await loop.run_in_executor(
                    self.pool, self.records.finish_bake, upload.id, digest, append, "" if auto else "held for approval")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            outcome = classify(err)
            if not isinstance(err, LayerbootError) and storage_error(err) is None:
                log.exception("upload %s: internal error", upload.id)
            self._record(self._failure, upload, outcome.retry, outcome.message)
            return
        if not recorded:
            log.warning("upload %s: baked into layer %s, but another replica took the upload over meanwhile "
                        "(this one's claim ran out): leaving it to that one", upload.id, digest[:12])
            return
        Path(upload.path).unlink(missing_ok=True)
        held = generation is None
        log.info("upload %s baked into layer %s in %.1fs%s", upload.id, digest[:12], time.monotonic() - started,
                 f"; held for 'layerboot uploads approve {upload.id}'" if held
                 else f"; profile {upload.profile} generation {generation}")

    def _failure(self, upload: Any, retry: bool, message: str) -> None:
        if retry:
            delay = backoff(upload.attempts, initial=self.config.server_retry_initial,
                            maximum=self.config.server_retry_max)
            if self.records.retry(upload.id, message, delay=delay, fenced=True):
                log.warning("upload %s: bake attempt %d failed, retrying in %.0fs: %s", upload.id, upload.attempts,
                            delay, message)
                return
        elif self.records.failed(upload.id, message, keep=self.config.server_failed_upload_keep, fenced=True):
            log.warning("upload %s refused: %s", upload.id, message)
            return
        log.warning("upload %s: bake attempt %d failed (%s), but another replica took it over meanwhile",
                    upload.id, upload.attempts, message)

    def _record(self, action: Any, *args: Any) -> bool:
        """Write a bake's outcome; when the database cannot be written the row stays 'baking' and the
        sweep re-queues it (a re-bake finds its layer already stored and its generation already made)."""
        try:
            action(*args)
            return True
        except Exception as err:
            problem = storage_error(err)
            log.error("cannot record the outcome of a bake: %s", problem.message if problem else err)
            return False

    def _bake(self, upload: Any, allow: frozenset[str]) -> str:
        """In a pool thread: check and bake the upload on its profile's current chain (its content policy
        ``allow``); returns the digest."""
        gen = self.state.profiles.current(upload.profile)
        layer = bake_archive(self.state.store, Path(upload.path), base=gen.base, parent=gen.layers[-1],
                             description=f"upload {upload.name} from {upload.mac}",
                             limits=BakeLimits.from_config(self.config, allow=allow), threads=self.config.bake_threads)
        return layer.digest
