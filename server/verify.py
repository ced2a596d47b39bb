"""Never serve a damaged object: hash each object before its first byte goes out, quarantine a bad one.

Objects are served with ``Cache-Control: immutable`` and an ETag that is their digest, so a damaged file
served once could be kept by every cache in front of layerbootd for a year. So before an object is sent for
the first time (since the daemon started, or since its file changed), it is hashed from the very descriptor
the response is then sent from. A good result is remembered by the file's identity and change stamps
(device, inode, size, mtime, ctime): a file replaced or rewritten gets a new inode or a new ctime and is
hashed again. Concurrent first requests for one object share one hashing.

A digest mismatch is logged, the file is moved to ``quarantine/`` (ObjectStore.quarantine) and the request,
like every later one for that digest, gets 500 naming the object, never its bytes. Importing the good bytes
again (``layerboot layer import FILE``) restores it. A read error (EIO) is answered 503 naming the disk; the
object is not quarantined (the bytes may be fine; the disk is not).

Cost, measured by bench/bench_verify.py: see docs/server.md (*Damaged objects*). Requests that send no bytes
(HEAD, a matching If-None-Match) are not held up by hashing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from layerboot.diskspace import storage_error
from layerboot.errors import LayerbootError
from layerboot.overlays.objects import ObjectStore

log = logging.getLogger("layerboot.server.verify")

HASH_THREADS = 2
Stamp = tuple[int, int, int, int, int]


class DamagedObject(LayerbootError):
    """An object whose bytes do not match its name: it is quarantined and never served (HTTP 500)."""

    http_status = 500


def stamp(fd: int) -> Stamp:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_fd(fd: int) -> str:
    """sha256 of an open file from its start; takes ownership of ``fd`` (a private duplicate)."""
    with os.fdopen(fd, "rb", buffering=0) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


DIRECT_CHUNK = 4 << 20


def hash_on_disk(path: Path) -> tuple[Stamp, str]:
    """The file's stamp and the sha256 of the bytes on the disk, read with O_DIRECT past the page cache.

    A scrub looks for damage under the filesystem; a cached page keeps the good bytes for as long as it stays
    in memory (and pages that are in use cannot be dropped), so hashing through the cache would miss exactly
    that. Reading around the cache also leaves the serving hot set alone during a scrub of a large store. A
    filesystem without O_DIRECT (EINVAL) is read the usual way.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return stamp(fd), _hash_fd(fd)
    try:
        digest, key = hashlib.sha256(), stamp(fd)
        with mmap.mmap(-1, DIRECT_CHUNK) as buffer:   # page-aligned, as O_DIRECT wants
            view = memoryview(buffer)
            while count := os.readv(fd, [buffer]):
                digest.update(view[:count])
            view.release()
        return key, digest.hexdigest()
    finally:
        os.close(fd)


class ObjectVerifier:
    def __init__(self, objects: ObjectStore, *, enabled: bool = True) -> None:
        self.objects = objects
        self.enabled = enabled
        self.verified: dict[str, Stamp] = {}
        self.running: dict[Stamp, asyncio.Future[str]] = {}
        self.pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="verify")

    def damaged(self, digest: str) -> DamagedObject:
        return DamagedObject(f"object {digest[:12]} is damaged on the server (its bytes do not match its sha256) "
                             "and was moved to quarantine/; it is not served",
                             hint="the admin restores it by importing the good bytes again: "
                                  "layerboot layer import FILE")

    def quarantined(self, digest: str) -> bool:
        directory = self.objects.paths.quarantine
        return directory.is_dir() and any(directory.glob(f"{digest}.*"))

    async def open(self, path: Path, digest: str) -> BinaryIO:
        """Open an object for sending; hash it first unless this very file was verified already."""
        loop = asyncio.get_running_loop()
        handle: BinaryIO = await loop.run_in_executor(None, open, path, "rb")
        if not self.enabled:
            return handle
        try:
            key = stamp(handle.fileno())
            if self.verified.get(digest) == key:
                return handle
            future = self.running.get(key)
            if future is None:
                # the thread gets its own descriptor: this request may end (and close its handle) first
                future = asyncio.ensure_future(loop.run_in_executor(self.pool, _hash_fd, os.dup(handle.fileno())))
                self.running[key] = future
                future.add_done_callback(lambda _f: self.running.pop(key, None))

            async def hashed() -> tuple[Stamp, str]:
                return key, await asyncio.shield(future)

            await self._settle(path, digest, hashed())
            return handle
        except BaseException:
            handle.close()
            raise

    async def check(self, digest: str, *, force: bool = False) -> str | None:
        """Verify one stored object now (``force``: the bytes on the disk, even if verified before); returns a
        problem or None.

        Used by :meth:`sweep`: right after start for what nodes will ask for first, and periodically (a
        scrub, server.scrub_interval) for bit rot that leaves a file's stamps alone.
        """
        path = self.objects.path(digest)
        if force:
            return await self._check_on_disk(path, digest)
        try:
            handle = await self.open(path, digest)
        except FileNotFoundError:
            return None
        except LayerbootError as err:
            return err.message
        handle.close()
        return None

    async def _check_on_disk(self, path: Path, digest: str) -> str | None:
        """The scrub's check: the bytes on the disk (hash_on_disk), quarantined when they do not match."""
        self.verified.pop(digest, None)
        try:
            await self._settle(path, digest, asyncio.get_running_loop().run_in_executor(self.pool, hash_on_disk, path))
        except FileNotFoundError:
            return None
        except LayerbootError as err:
            return err.message
        return None

    async def _settle(self, path: Path, digest: str, hashed: Any) -> None:
        """Await ``hashed`` ((stamp, sha256) of ``path``) and act on it, for serving and the scrub alike: a match
        is remembered by the stamp, a mismatch quarantined (DamagedObject), a read error of the disk becomes its
        one-line problem (logged); other OSErrors (FileNotFoundError) pass through."""
        try:
            key, actual = await hashed
        except OSError as err:
            problem = storage_error(err, path, doing="reading")
            if problem is None:
                raise
            log.error("cannot verify object %s: %s", digest[:12], problem.message)
            raise problem from None
        if actual != digest:
            await asyncio.get_running_loop().run_in_executor(None, self._quarantine, path, digest, key, actual)
            raise self.damaged(digest)
        self.verified[digest] = key

    async def sweep(self, digests: list[str], *, force: bool, what: str) -> None:
        """Verify ``digests`` one after another (one hashing thread, so serving keeps the other)."""
        started, damaged = time.monotonic(), 0
        for digest in digests:
            if await self.check(digest, force=force) is not None:
                damaged += 1
        log.info("%s: %d object(s) checked in %.0fs, %d with a problem", what, len(digests),
                 time.monotonic() - started, damaged)

    def _quarantine(self, path: Path, digest: str, key: Stamp, actual: str) -> None:
        """Move the damaged file aside, unless it was replaced meanwhile (a repair by re-import)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if stamp(fd) != key:
                return
        finally:
            os.close(fd)
        self.verified.pop(digest, None)
        self.objects.quarantine(digest, reason=f"failed its hash check before serving (content hash {actual[:16]}…)")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def current_trees(store: Any, digests: list[str]) -> list[str]:
    """The dm-verity trees of the layers among ``digests``, each made again when its object is missing (removed by
    ``store fsck --repair`` or by the clean-up of a layerbootd that did not know trees): signed manifests name
    it, streaming nodes need it, and it comes out byte for byte the same (overlays/verity.py)."""
    trees = []
    for digest in digests:
        try:
            layer = store.get(digest)
        except LayerbootError:
            continue
        if layer.verity is None:
            continue
        if not store.objects.exists(layer.verity.tree):
            log.warning("the dm-verity tree of layer %s is missing: making it again", digest[:12])
            layer = store.with_verity(layer)
        trees.append(layer.verity.tree)
    return trees


async def keep_verified(verifier: ObjectVerifier, profiles: Any, *, scrub_interval: int,
                        turn: Any = None) -> None:
    """Layerbootd's background task: right after start, make missing dm-verity trees of the current generations
    again and verify what those generations name (what booting nodes ask for first, so they need not wait for
    the hash); then every ``scrub_interval`` seconds re-hash every object in the store (0: never). ``turn()``
    (blocking) says whether this replica scrubs this time: replicas share one store, so one scrub of it is
    enough (server/replica)."""
    try:
        current: list[str] = []
        for name in profiles.names():
            gen = profiles.current(name)
            current += [d for d in gen.objects if d not in current]
        current += await asyncio.get_running_loop().run_in_executor(None, current_trees, profiles.store, current)
        if not verifier.enabled:
            return
        await verifier.sweep(current, force=False, what="start-up verification of the current generations")
    except Exception as err:   # a broken profile record: serving verifies on demand all the same
        log.warning("start-up verification stopped: %s", err)
    while scrub_interval:
        await asyncio.sleep(scrub_interval)
        try:
            if turn is not None and not await asyncio.to_thread(turn):
                continue
            await verifier.sweep(profiles.store.digests(), force=True, what="scrub")
        except Exception as err:
            log.warning("scrub stopped: %s; next one in %ds", err, scrub_interval)
