"""Serving immutable store objects: which ones a node may fetch, and a sendfile response with Range.

A node may fetch the digests named by any generation of its profile (so a generation published while it boots
does not break the boot), and the dm-verity hash trees of those layers (a streaming node reads them with the
layer: initrd/stage1/stream.py). Generations are immutable, so the digest set of each generation is read once and
cached; only new generation numbers are read later.

The response body goes out with sendfile(2) from the worker threads of server/guard/sender.py (zero copy, like
nginx; a client that stops reading holds no thread and is dropped after server.send_timeout) rather than
aiohttp's FileResponse, because the ETag must be the digest itself (FileResponse derives it from mtime and
size) and every object is immutable: ``Cache-Control: public, max-age=31536000, immutable``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from layerboot.errors import LayerbootError
from layerboot.overlays.profile import Profiles
from layerboot.server.guard.connections import client_key
from layerboot.server.guard.sender import Sender

log = logging.getLogger("layerboot.server.objects")

CACHE_CONTROL = "public, max-age=31536000, immutable"
RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
BEYOND = 1 << 63            # stands for any position written with more digits than a file size can have
_MAX_DIGITS = 19


@dataclass
class ProfileIndex:
    """Digests each profile's generations name (layers, kernel, initrd, the layers' dm-verity trees), read once
    per generation."""

    profiles: Profiles
    _seen: dict[str, dict[int, frozenset[str]]] = field(default_factory=dict)

    def digests(self, profile: str) -> set[str]:
        known = self._seen.setdefault(profile, {})
        for number in self.profiles.numbers(profile):
            if number not in known:
                gen = self.profiles.generation(profile, number)
                trees = (self._tree(d) for d in gen.chain)
                known[number] = frozenset(d for d in (*gen.objects, *trees) if d)
        result: set[str] = set()
        for digests in known.values():
            result |= digests
        return result

    def _tree(self, digest: str) -> str | None:
        """The layer's dm-verity tree: the one its signed manifest names (made when the manifest was signed)."""
        try:
            verity = self.profiles.store.get(digest).verity
        except LayerbootError:
            return None
        return verity.tree if verity is not None else None

    def allows(self, profile: str, digest: str) -> bool:
        return digest in self.digests(profile)


class RangeError(Exception):
    pass


def _position(digits: str) -> int:
    """A decimal position; one too long for any file is BEYOND (never int() on thousands of digits)."""
    return int(digits) if len(digits) <= _MAX_DIGITS else BEYOND


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(offset, count) for one byte range (RFC 9110 section 14.1.2); None for no Range header or a range unit
    other than bytes (the whole object is sent); RangeError when malformed or unsatisfiable."""
    text = header.strip().replace(" ", "").replace("\t", "")
    if not text or not text[:6].lower() == "bytes=":
        return None
    match = RANGE_RE.fullmatch(text)
    if not match:
        raise RangeError("only one byte range per request is served (bytes=START-END, bytes=START- or bytes=-N)")
    first, last = match.groups()
    if not first and not last:
        raise RangeError("empty byte range")
    if not first:  # suffix: the last N bytes
        length = _position(last)
        if length == 0 or size == 0:
            raise RangeError("zero-length suffix range" if length == 0 else "the object is empty")
        start = max(size - length, 0)
        return start, size - start
    start = _position(first)
    end = min(_position(last), size - 1) if last else size - 1
    if last and _position(last) < start:
        raise RangeError("the range ends before it starts")
    if start >= size:
        raise RangeError(f"the range starts beyond the object's {size} bytes")
    return start, end - start + 1


def etag_matches(header: str, digest: str) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or digest in tags


async def send_object(request: web.Request, path: Path, digest: str, sender: Sender, *,
                      handle: BinaryIO | None = None, private: bool = False) -> web.StreamResponse:
    """Send one object (200, 206 for a Range, 304 for a matching If-None-Match, 416 for a bad range).

    ``handle``: the object already open (and verified: server.verify); it is closed when done. ``private``: a
    node's own layer (its keys): no cache on the way may keep it.
    """
    headers = {"ETag": f'"{digest}"', "Cache-Control": "private, no-store" if private else CACHE_CONTROL,
               "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if etag_matches(request.headers.get("If-None-Match", ""), digest):
        if handle is not None:
            handle.close()
        return web.Response(status=304, headers=headers)
    if handle is None:
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
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is None or sock is None:
            raise ConnectionResetError("connection lost")
        try:
            await _headers_sent(transport, sender.send_timeout)
            await sender.send(sock.fileno(), handle.fileno(), offset, count, client=client_key(request.remote))
        except ConnectionResetError:
            raise
        except OSError as err:   # a stalled client, an I/O error: the headers are out, so just drop it
            log.warning("sending %s to %s stopped: %s", digest[:12], request.remote, err)
            if isinstance(err, TimeoutError):
                # a reset, as nginx's reset_timedout_connection: the kernel drops the megabytes the client
                # never read at once instead of holding them to send after a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            raise ConnectionResetError(str(err)) from None
        await response.write_eof()
        return response
    finally:
        handle.close()


async def _headers_sent(transport: asyncio.Transport, timeout: float) -> None:
    """Wait until aiohttp's buffer (the response head) is in the socket: sendfile writes past it.

    Nearly always at once; a client that has not read earlier responses gets ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("connection lost")
        if loop.time() > deadline:
            raise TimeoutError(f"the client took no data for {timeout:g} s (server.send_timeout)")
        await asyncio.sleep(0.01)
