"""Reading request bodies with an idle timeout: a client that stops sending is cut off, not waited for."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def read_some(request: web.Request, timeout: float) -> bytes:
    """The next piece of the body as it arrives (b"" at its end); 408 after ``timeout`` seconds without a byte.

    Not a whole-body deadline: a slow client that keeps sending is never cut off.
    """
    try:
        async with asyncio.timeout(timeout):
            return await request.content.readany()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body stalled: no byte for {timeout:g} s "
                                          "(server.read_timeout)", headers={"Connection": "close"}) from None


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """A whole (small) body: 413 past ``limit`` bytes, 408 when it stalls."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks, size = [], 0
    while chunk := await read_some(request, timeout):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)
