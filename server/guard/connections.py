"""The listening socket: a per-client-address connection limit in front of aiohttp's protocol.

aiohttp has no connection limit, so layerbootd creates the listening server itself with ``runner.server`` (the
aiohttp protocol factory) wrapped in :class:`GuardedConnection`. A connection over its address's limit never
reaches aiohttp: it gets a fixed ``429 Too Many Requests`` answer with ``Retry-After`` at once, its request
(if any) is read and discarded, and it is closed when the client closes or after LINGER_SECONDS. So an
address that opens thousands of connections holds each extra one for at most that long.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from layerboot.server.guard.limits import RETRY_AFTER, Slots

log = logging.getLogger("layerboot.server.guard")

LINGER_SECONDS = 2.0
LOG_EVERY = 60.0               # seconds between two log lines about one refused address


def client_key(peername: Any) -> str:
    """The client address a limit counts against (an IPv4-mapped IPv6 address counts as its IPv4 address)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    return host.removeprefix("::ffff:") if "." in host else host


class ConnectionGuard:
    """Counts open connections per client address; over the limit, connections are refused."""

    def __init__(self, slots: Slots, limit: int) -> None:
        self.slots = slots
        self.limit = limit
        self._logged: dict[tuple[str, str], float] = {}

    def admit(self, key: str, service: str) -> bool:
        """Take a connection slot for address ``key``; False (and a log line, at most one a minute per
        address and service) when it has its limit open already. HTTP and SFTP connections count together."""
        if self.slots.take("connection", key, self.limit):
            return True
        now = time.monotonic()
        if now - self._logged.get((service, key), -LOG_EVERY) >= LOG_EVERY:
            if len(self._logged) > 4096:
                self._logged.clear()
            self._logged[service, key] = now
            log.warning("refusing %s connections from %s: it has %d open (server.max_connections_per_client)",
                        service, key, self.limit)
        return False

    def release(self, key: str) -> None:
        self.slots.give_back("connection", key)

    def refusal(self, key: str) -> bytes:
        """The fixed HTTP answer to a connection over the limit."""
        body = (f"layerboot: error: {key} has {self.limit} connections open already; try again in "
                f"{RETRY_AFTER} s\nlayerboot: hint: the limit is server.max_connections_per_client\n").encode()
        head = (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER}\r\nConnection: close\r\n\r\n")
        return head.encode("ascii") + body


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for an admitted connection; a fixed 429 answer for one over its address's limit."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.key: str | None = None          # set while the connection holds a slot
        self.closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        key = client_key(transport.get_extra_info("peername"))
        if self.guard.admit(key, "HTTP"):
            self.key = key
            self.inner.connection_made(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        try:
            transport.write(self.guard.refusal(key))
            transport.write_eof()
        except OSError:          # the client is gone already
            transport.abort()
            return
        self.closer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.key is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.key is not None:
            return self.inner.eof_received()
        return False           # a refused client finished sending: close

    def pause_writing(self) -> None:
        if self.key is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.key is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closer is not None:
            self.closer.cancel()
        if self.key is not None:
            self.guard.release(self.key)
            self.key = None
            self.inner.connection_lost(exc)


async def listen(runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard, *,
                 backlog: int = 1024, ssl: Any = None) -> asyncio.AbstractServer:
    """Listen on host:port with aiohttp's protocol behind the guard (instead of web.TCPSite); TLS with ``ssl``."""
    factory = runner.server
    if factory is None:
        raise RuntimeError("the runner is not set up")
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: GuardedConnection(factory(), guard), host, port,
                                    reuse_address=True, backlog=backlog, ssl=ssl)


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's protocol reports to. A malformed request (anyone can send one) is one info line
    with the client's address, and a response cut off because the client went away or stalled (the handler
    raises ConnectionError; the handler logged a stall already) one debug line, not an error with a traceback.
    Anything else keeps its traceback: it is a bug."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        text = str(msg) % args if args else str(msg)
        if isinstance(exc, HttpProcessingError):
            self.info("%s: %d %s", text, exc.code, " ".join(str(exc.message).split())[:200])
        elif isinstance(exc, ConnectionError):
            self.debug("%s: connection dropped: %s", text, exc)
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)
