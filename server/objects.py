"""Serving immutable store objects: which ones a node may fetch, and a sendfile response with Range.

A node may fetch the digests named by any generation of its profile (so a generation published while it boots
does not break the boot). Generations are immutable, so the digest set of each generation is read once and
cached; only new generation numbers are read later.

The response body goes out with sendfile(2) from a thread pool (zero copy, like nginx; see _sendfile_thread for
why not asyncio's ``loop.sendfile``, which stays the fallback) rather than aiohttp's FileResponse,
because the ETag must be the digest itself (FileResponse derives it from mtime and size) and every object is
immutable: ``Cache-Control: public, max-age=31536000, immutable``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import select
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from layerboot.overlays.profile import Profiles

log = logging.getLogger("layerboot.server.objects")

CACHE_CONTROL = "public, max-age=31536000, immutable"
SEND_THREADS = 64
STALL_SECONDS = 120
_send_pool: ThreadPoolExecutor | None = None
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class ProfileIndex:
    """Digests each profile's generations name (layers, kernel, initrd), read once per generation."""

    profiles: Profiles
    _seen: dict[str, dict[int, frozenset[str]]] = field(default_factory=dict)

    def digests(self, profile: str) -> set[str]:
        known = self._seen.setdefault(profile, {})
        for number in self.profiles.numbers(profile):
            if number not in known:
                gen = self.profiles.generation(profile, number)
                known[number] = frozenset(d for d in (*gen.chain, gen.kernel, gen.initrd) if d)
        result: set[str] = set()
        for digests in known.values():
            result |= digests
        return result

    def allows(self, profile: str, digest: str) -> bool:
        return digest in self.digests(profile)


class RangeError(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(offset, count) for one byte range, None for no Range header; RangeError when unsatisfiable."""
    if not header:
        return None
    match = RANGE_RE.match(header.strip().replace(" ", ""))
    if not match:
        raise RangeError("only one byte range per request is served (bytes=START-END)")
    first, last = match.groups()
    if not first and not last:
        raise RangeError("empty byte range")
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeError("zero-length suffix range")
        start = max(size - length, 0)
        return start, size - start
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeError(f"range starts beyond the object's {size} bytes")
    return start, end - start + 1


def _etag_matches(header: str, digest: str) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or digest in tags


async def send_object(request: web.Request, path: Path, digest: str) -> web.StreamResponse:
    """Send one object (200, 206 for a Range, 304 for a matching If-None-Match, 416 for a bad range)."""
    headers = {"ETag": f'"{digest}"', "Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if _etag_matches(request.headers.get("If-None-Match", ""), digest):
        return web.Response(status=304, headers=headers)
    handle = await asyncio.get_running_loop().run_in_executor(None, open, path, "rb")
    try:
        size = os.fstat(handle.fileno()).st_size
        rng_header = request.headers.get("Range", "")
        if_range = request.headers.get("If-Range", "")
        if if_range and if_range.strip('"') != digest:
            rng_header = ""   # the client holds another version: send the whole object
        try:
            rng = parse_range(rng_header, size)
        except RangeError as err:
            headers["Content-Range"] = f"bytes */{size}"
            raise web.HTTPRequestRangeNotSatisfiable(headers=headers, text=f"{err}\n")
        offset, count = rng if rng else (0, size)
        response = web.StreamResponse(status=206 if rng else 200, headers=headers)
        if rng:
            response.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
        response.content_length = count
        await response.prepare(request)
        if request.method == "HEAD" or count == 0:
            await response.write_eof()
            return response
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_write_buffer_size() == 0:
            # the thread owns duplicates of both descriptors, so a connection closed meanwhile by the
            # event loop can never make it write into a reused descriptor number
            fds = (os.dup(sock.fileno()), os.dup(handle.fileno()))
            try:
                await asyncio.get_running_loop().run_in_executor(_pool(), _sendfile_thread, *fds, offset, count)
            except ConnectionResetError:
                raise
            except OSError as err:   # a stalled client, an I/O error: the headers are out, so just drop it
                log.warning("sending %s to %s stopped: %s", digest[:12], request.remote, err)
                raise ConnectionResetError(str(err)) from None
        else:
            await asyncio.get_running_loop().sendfile(transport, handle, offset, count)
        await response.write_eof()
        return response
    finally:
        handle.close()


def _pool() -> ThreadPoolExecutor:
    global _send_pool
    if _send_pool is None:
        _send_pool = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="sendfile")
    return _send_pool


def _sendfile_thread(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    """Push ``count`` bytes with os.sendfile from a worker thread (the GIL is released in the syscall).

    asyncio's loop.sendfile issues every sendfile from the event-loop thread, so one core does all the kernel
    copying; from threads, 20 clients are served by every core (bench/bench_serve.py). The socket stays
    non-blocking: on EAGAIN the thread waits in poll() for room.
    """
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    try:
        while count > 0:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, count)
            except BlockingIOError:
                if not poller.poll(STALL_SECONDS * 1000):
                    raise TimeoutError(f"client took no data for {STALL_SECONDS} s") from None
                continue
            except OSError as err:
                if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise ConnectionResetError("client went away") from None
                raise
            if sent == 0:
                raise ConnectionResetError("object file shrank or client went away")
            offset += sent
            count -= sent
    finally:
        os.close(sock_fd)
        os.close(file_fd)
