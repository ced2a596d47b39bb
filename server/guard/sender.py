"""Object bodies go out with sendfile(2) from a few worker threads, each waiting on its own epoll set.

Two earlier designs and why they were replaced (figures in bench/README.md):

* asyncio's ``loop.sendfile`` issues every sendfile from the event-loop thread, so one core does all the kernel
  copying: 0.66x nginx with 20 clients;
* a thread per transfer that waits in ``poll()`` while its client is slow reached nginx's throughput, but 64
  clients that open a download and stop reading held all 64 threads and blocked every download for 120 s.

Here a transfer holds no thread while its client is not reading. Each worker waits for *any* of its sockets to
have room in its send buffer (level-triggered ``EPOLLOUT``), then gives every ready socket one sendfile of at
most ``QUANTUM`` bytes per round. Transfers take turns, and a client's quantum per round is split among its
ready transfers, so when the sending is the bottleneck a client that opens more downloads does not get a
larger share (when the network is, TCP shares it per connection, and the per-node download limit caps how
many connections a node may hold). A socket that takes no byte for ``send_timeout`` seconds
is dropped. The descriptors are duplicated for the worker, so a connection the event loop closes meanwhile
can never make a worker write into a reused descriptor number.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("layerboot.server.guard.sender")

QUANTUM = 2 << 20            # bytes per socket per round, as nginx's sendfile_max_chunk (2m)
MIN_SHARE = 256 << 10        # a client with many ready transfers still sends this much on each per round
SWEEP_SECONDS = 0.5          # how often a worker looks for stalled and cancelled transfers
GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


class SendStalled(TimeoutError):
    """The client took no data for send_timeout seconds."""


@dataclass(eq=False)
class Transfer:
    sock_fd: int                 # duplicates, owned (and closed) by the worker
    file_fd: int
    offset: int
    remaining: int
    client: str
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    last_progress: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class _Worker(threading.Thread):
    def __init__(self, number: int, send_timeout: float) -> None:
        super().__init__(name=f"send-{number}", daemon=True)
        self.send_timeout = send_timeout
        self.epoll = select.epoll()
        self.lock = threading.Lock()
        self.transfers: dict[int, Transfer] = {}
        self.stopping = False

    def add(self, transfer: Transfer) -> None:
        with self.lock:
            self.epoll.register(transfer.sock_fd, select.EPOLLOUT)
            self.transfers[transfer.sock_fd] = transfer

    def run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_SECONDS
        while not self.stopping:
            try:
                events = self.epoll.poll(SWEEP_SECONDS)
            except InterruptedError:
                continue
            now = time.monotonic()
            with self.lock:
                ready = [t for t in (self.transfers.get(fd) for fd, _ in events) if t is not None]
            shares = Counter(t.client for t in ready)
            for transfer in ready:
                self._step(transfer, max(QUANTUM // shares[transfer.client], MIN_SHARE), now)
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + SWEEP_SECONDS
        with self.lock:
            transfers = list(self.transfers.values())
        for transfer in transfers:
            self._finish(transfer, ConnectionResetError("the server is stopping"))
        self.epoll.close()

    def _step(self, t: Transfer, share: int, now: float) -> None:
        if t.cancelled:
            self._finish(t, None)
            return
        try:
            sent = os.sendfile(t.sock_fd, t.file_fd, t.offset, min(t.remaining, share))
        except BlockingIOError:
            return
        except OSError as err:
            self._finish(t, ConnectionResetError("the client went away") if err.errno in GONE else err)
            return
        if sent == 0:
            self._finish(t, ConnectionResetError("the object file is shorter than its record"))
            return
        t.offset += sent
        t.remaining -= sent
        t.last_progress = now
        if t.remaining == 0:
            self._finish(t, None)

    def _sweep(self, now: float) -> None:
        with self.lock:
            transfers = list(self.transfers.values())
        for t in transfers:
            if t.cancelled:
                self._finish(t, None)
            elif now - t.last_progress > self.send_timeout:
                self._finish(t, SendStalled(f"the client took no data for {self.send_timeout:g} s "
                                            "(server.send_timeout)"))

    def _finish(self, t: Transfer, error: BaseException | None) -> None:
        with self.lock:
            if self.transfers.pop(t.sock_fd, None) is None:
                return
            self.epoll.unregister(t.sock_fd)
        os.close(t.sock_fd)
        os.close(t.file_fd)
        try:
            t.loop.call_soon_threadsafe(_settle, t.future, error)
        except RuntimeError:       # the event loop is closed: the daemon is exiting
            pass


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Sender:
    """The worker threads; :meth:`send` pushes one byte range of a file down one connection."""

    def __init__(self, *, send_timeout: float, threads: int = 0) -> None:
        count = threads or max(4, 2 * (os.cpu_count() or 1))
        self.send_timeout = send_timeout
        self.workers = [_Worker(n, send_timeout) for n in range(count)]
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stopping = True

    def active(self) -> int:
        return sum(len(w.transfers) for w in self.workers)

    async def send(self, sock_fd: int, file_fd: int, offset: int, count: int, *, client: str) -> None:
        """Send ``count`` bytes of ``file_fd`` from ``offset``; raises SendStalled, ConnectionResetError, OSError."""
        loop = asyncio.get_running_loop()
        sock_dup = os.dup(sock_fd)
        try:
            file_dup = os.dup(file_fd)
        except OSError:
            os.close(sock_dup)
            raise
        transfer = Transfer(sock_dup, file_dup, offset, count, client, loop.create_future(), loop)
        try:
            min(self.workers, key=lambda w: len(w.transfers)).add(transfer)
        except OSError:
            os.close(sock_dup)
            os.close(file_dup)
            raise
        try:
            await transfer.future
        except asyncio.CancelledError:
            transfer.cancelled = True      # the worker closes its descriptors on its next sweep
            raise
