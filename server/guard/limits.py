"""Timeouts and per-client limits: the numbers (from the server.* settings) and the counters that enforce them."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from layerboot.errors import LayerbootError

RETRY_AFTER = 5               # seconds a refused client is told to wait (Retry-After)


class TooBusy(LayerbootError):
    """A request refused for want of room: 429 when this client used up its share, 503 when the server did.

    layerbootd answers it with a ``Retry-After`` header.
    """

    def __init__(self, message: str, *, status: int = 429, retry_after: int = RETRY_AFTER,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    """The server.* timeouts and limits (defaults and meanings in layerboot/settings.py); 0 turns a limit off."""

    header_timeout: float                # seconds to send a complete request head (and keep-alive idle time)
    read_timeout: float                  # seconds a request body may go without a byte
    send_timeout: float                  # seconds a client may take no byte of a response
    connections_per_client: int          # open connections per client address
    downloads_per_node: int              # concurrent /objects downloads per node
    uploads_per_node: int                # concurrent upload bodies per node
    queue_per_node: int                  # uploads of one node waiting in the bake queue

    @classmethod
    def from_config(cls, config: Any) -> "Limits":
        return cls(header_timeout=config.server_header_timeout, read_timeout=config.server_read_timeout,
                   send_timeout=config.server_send_timeout,
                   connections_per_client=config.server_max_connections_per_client,
                   downloads_per_node=config.server_max_downloads_per_node,
                   uploads_per_node=config.server_max_uploads_per_node,
                   queue_per_node=config.server_max_queued_per_node)


class Slots:
    """How many of a kind of thing (connections, downloads, uploads) each key (address, node) holds now."""

    def __init__(self) -> None:
        self.held: Counter[tuple[str, str]] = Counter()

    def take(self, kind: str, key: str, limit: int) -> bool:
        """Take one slot unless ``key`` already holds ``limit`` (0: no limit); False when refused."""
        if limit and self.held[kind, key] >= limit:
            return False
        self.held[kind, key] += 1
        return True

    def give_back(self, kind: str, key: str) -> None:
        self.held[kind, key] -= 1
        if self.held[kind, key] <= 0:
            del self.held[kind, key]

    @contextlib.contextmanager
    def hold(self, kind: str, key: str, limit: int, *, setting: str) -> Iterator[None]:
        """One slot for the duration of the block; TooBusy (429) when ``key`` holds ``limit`` already."""
        if not self.take(kind, key, limit):
            raise TooBusy(f"{key} already has {limit} {kind}s in progress; try again in {RETRY_AFTER} s",
                          hint=f"the limit is {setting}")
        try:
            yield
        finally:
            self.give_back(kind, key)

    def counts(self) -> dict[str, int]:
        """Totals per kind ("connections", "downloads", "uploads"), for /status."""
        totals: Counter[str] = Counter()
        for (kind, _), number in self.held.items():
            totals[f"{kind}s"] += number
        return dict(totals)
