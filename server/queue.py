"""The persistent bake queue: the uploads table is the queue, a few async workers drain it.

Workers bake in a thread pool (bake_archive spends its time in zstd and tar2sqfs child processes), so the
event loop keeps serving HTTP while a bake runs. ``server.bake_workers`` bakes run at once; at most
``server.queue_size`` uploads may be pending (receiving, received or baking) before new ones are refused with
503. Completed files in the nodes' SFTP areas are picked up by the watcher (watchdog) and by a sweep every
few seconds, so a missed file-system event only delays a bake.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.overlays.bake import BakeLimits, bake_archive
from layerboot.server.nodes import normalize_mac
from layerboot.server.uploads import (UploadRecords, append_layer, is_complete_name, move_into_queue, queue_dir)

log = logging.getLogger("layerboot.server.queue")

SWEEP_SECONDS = 5.0
STALE_SCRATCH_SECONDS = 3600


class QueueFull(LayerbootError):
    pass


class Uploads:
    """Upload admission, recovery after restart, and the bake workers."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.paths = state.paths
        self.config = state.config
        self.records = UploadRecords(state.registry.conn, state.paths, default_policy=state.config.server_upload_policy)
        self.wake = asyncio.Event()
        self.append_lock = asyncio.Lock()
        self.workers: list[asyncio.Task[None]] = []
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.config.server_bake_workers),
                                       thread_name_prefix="bake")
        self.watcher: Any = None
        self.sweeper: asyncio.Task[None] | None = None

    def reconfigure(self, config: Any) -> None:
        """A reloaded config (SIGHUP): new bake limits, threads, queue size and default policy; the number of
        workers stays until a restart."""
        self.config = config
        self.records.default_policy = config.server_upload_policy

    # -- life cycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        queue_dir(self.paths).mkdir(parents=True, exist_ok=True)
        self._clean_stale_scratch()
        requeued, failed = self.records.recover()
        if requeued or failed:
            log.info("recovered the upload queue: %d re-queued, %d failed", requeued, failed)
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

    def _clean_stale_scratch(self) -> None:
        """Remove what a killed daemon left: SFTP parts in the nodes' areas (those transfers were cut off)
        and bake scratch dirs (old enough not to belong to a 'layerboot bake' running beside us)."""
        for part in self.paths.incoming.glob("*/.*.part"):
            if part.parent.name != ".queue":
                part.unlink(missing_ok=True)
                log.info("removed %s, left by a transfer that was cut off", part)
        cutoff = time.time() - STALE_SCRATCH_SECONDS
        for scratch in self.paths.tmp.glob("bake.*"):
            try:
                if scratch.is_dir() and scratch.stat().st_mtime < cutoff:
                    shutil.rmtree(scratch, ignore_errors=True)
            except OSError:
                pass

    # -- admission ---------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return self.records.counts()

    def admit(self) -> None:
        """Refuse a new upload when the queue is full."""
        pending = self.records.pending()
        if pending >= self.config.server_queue_size:
            raise QueueFull(f"the bake queue is full ({pending} uploads waiting); try again later",
                            hint="raise server.queue_size or server.bake_workers")

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
        """Move a completed file from a node's area into the queue (unless the queue is full)."""
        try:
            mac = normalize_mac(path.parent.name)
            node = self.state.registry.find(mac)
            if node is None:
                log.warning("ignoring %s: no registered node %s", path, mac)
                return
            if not path.is_file():
                return
            self.admit()
        except QueueFull:
            return   # stays in the node's area; a later sweep takes it
        except LayerbootError as err:
            log.warning("ignoring %s: %s", path, err.message)
            return
        try:
            upload = self.records.begin(mac, node.profile, path.name, via="sftp", size=path.stat().st_size)
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
            except OSError as err:
                log.warning("sweep of %s failed: %s", self.paths.incoming, err)

    # -- baking ------------------------------------------------------------------------------------------
    async def _worker(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            upload = self.records.claim()
            if upload is None:
                self.wake.clear()
                continue
            self.wake.set()   # let a sibling look for more work
            log.info("baking upload %s (%s from %s, profile %s)", upload.id, upload.name, upload.mac, upload.profile)
            started = time.monotonic()
            try:
                allow = self.records.allowed(upload.profile)   # read here: the database stays on the loop thread
                digest = await loop.run_in_executor(self.pool, self._bake, upload, allow)
                generation = None
                if self.records.policy(upload.profile) == "auto":
                    async with self.append_lock:   # one new generation at a time
                        generation = await loop.run_in_executor(self.pool, append_layer, self.state.profiles,
                                                                upload.profile, digest)
            except LayerbootError as err:
                log.warning("upload %s failed: %s", upload.id, err.message)
                self.records.failed(upload.id, err.message)
                Path(upload.path).unlink(missing_ok=True)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug: keep the worker alive, keep the file for a retry after restart
                log.exception("upload %s: internal error", upload.id)
                self.records.failed(upload.id, f"internal error: {type(err).__name__}: {err}")
                continue
            held = generation is None
            self.records.baked(upload.id, digest, generation, "held for approval" if held else "")
            Path(upload.path).unlink(missing_ok=True)
            log.info("upload %s baked into layer %s in %.1fs%s", upload.id, digest[:12], time.monotonic() - started,
                     f"; held for 'layerboot uploads approve {upload.id}'" if held
                     else f"; profile {upload.profile} generation {generation}")

    def _bake(self, upload: Any, allow: frozenset[str]) -> str:
        """In a pool thread: check and bake the upload on its profile's current chain (its content policy
        ``allow``); returns the digest."""
        gen = self.state.profiles.current(upload.profile)
        layer = bake_archive(self.state.store, Path(upload.path), base=gen.base, parent=gen.layers[-1],
                             description=f"upload {upload.name} from {upload.mac}",
                             limits=BakeLimits.from_config(self.config, allow=allow), threads=self.config.bake_threads)
        return layer.digest
