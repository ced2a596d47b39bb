"""An in-memory token bucket per key (a client address): ``per_minute`` on average, ``burst`` at once.

Kept in memory on purpose: limiting must not need a disk write (a full store disk still boots nodes), and a
restart forgetting the buckets only makes the limit briefly more lenient.
"""

from __future__ import annotations

import time

MAX_KEYS = 65536


class RateLimiter:
    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.buckets: dict[str, tuple[float, float]] = {}    # key -> (tokens, time)

    def wait(self, key: str, *, now: float | None = None) -> float:
        """0 when ``key`` may go ahead now (and its bucket is charged); else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, then = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self.buckets) >= MAX_KEYS and key not in self.buckets:
            self._prune(now)
        self.buckets[key] = (tokens - 1.0, now)
        return 0.0

    def _prune(self, now: float) -> None:
        """Forget buckets that are full again (they behave exactly like a new one)."""
        full = [k for k, (tokens, then) in self.buckets.items()
                if tokens + (now - then) * self.rate >= self.burst]
        for key in full:
            del self.buckets[key]
        if len(self.buckets) >= MAX_KEYS:     # a flood of distinct keys: start over rather than grow
            self.buckets.clear()
