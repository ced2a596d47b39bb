"""Where each object comes from: the signed manifest's mirrors, nearest or first listed first, then the origin.

Objects are immutable and named by their sha256, so any HTTP cache can serve them (docs/scale.md); the signed
manifest may list such caches (``mirrors``, base URLs, and ``mirror_order``: ``listed`` or ``latency``).
:meth:`Sources.for_layer` is **the one place that decides which base URLs a download tries, in which order**;
every fetch mode asks it (fetch.py today, block streaming tomorrow), so the rules live here only:

* only an object published at ``objects/<its own digest>`` may come from a mirror; anything else (a per-node
  layer, which a mirror must never cache or serve) comes from the origin only;
* mirrors that failed during this boot (an error, a wrong size or hash) are skipped for the rest of it;
* the origin (``layerboot.server=``) is always last, so a boot never depends on a mirror.

``latency`` order ranks the mirrors once per boot by TCP connect time (the best of three tries each, all
mirrors probed at the same time on ``_thread`` workers, at most ``PROBE_TIMEOUT`` seconds): a rack's own mirror
answers in well under a millisecond, one across the site's core in more. A mirror that cannot be reached while
ranking is marked down at once. Mirrors are trusted with nothing: every byte is checked against the signed
size and sha256, whoever sent it, and the node's boot token goes to a mirror only as the origin would get it
(a mirror passes it on when it has to ask the origin; docs/security.md).
"""

from __future__ import annotations

import time

PROBE_TIMEOUT = 1.0       # seconds for one connect while ranking
PROBES = 3                # connects per mirror; the fastest counts


def mirrorable(layer) -> bool:  # noqa: ANN001 - verify.Layer
    """Whether ``layer`` may come from a mirror: it is published at ``objects/<its digest>`` (a public,
    immutable object); per-node and other paths are origin-only."""
    return layer.path == "objects/" + layer.digest


def connect_time(url: str, timeout: float = PROBE_TIMEOUT) -> float | None:
    """Seconds one TCP connect to ``url``'s host and port takes; None when it fails."""
    from .http import HttpError, open_socket, split_url

    host, port, _ = split_url(url)
    started = time.monotonic()
    try:
        sock = open_socket(host, port, timeout)
    except HttpError:
        return None
    sock.close()
    return time.monotonic() - started


class Sources:
    """The origin and the signed mirror list of one boot, with what this boot learned about the mirrors."""

    def __init__(self, origin: str, mirrors: tuple[str, ...] = (), order: str = "listed", *,
                 say=None) -> None:  # noqa: ANN001 - say(str) -> None
        import _thread

        self.origin = origin.rstrip("/")
        self.mirrors = [m.rstrip("/") for m in mirrors if m.rstrip("/") != self.origin]
        self.order = order
        self.say = say or (lambda text: None)
        self.down: dict[str, str] = {}           # mirror -> why it is not used any more this boot
        self.latency: dict[str, float] = {}      # mirror -> connect seconds (latency order)
        self.bytes: dict[str, int] = {}          # base URL -> bytes it delivered
        self._lock = _thread.allocate_lock()

    @classmethod
    def for_manifest(cls, origin: str, manifest, *, say=None) -> "Sources":  # noqa: ANN001 - BootManifest
        return cls(origin, tuple(getattr(manifest, "mirrors", ()) or ()),
                   getattr(manifest, "mirror_order", "listed") or "listed", say=say)

    # -- ranking ------------------------------------------------------------------------------------------
    def rank(self, probe=connect_time) -> None:  # noqa: ANN001 - probe(url) -> seconds | None
        """With ``latency`` order: measure every mirror at once and sort them, nearest first (ties keep the
        signed order); unreachable ones are marked down. ``listed`` order measures nothing."""
        if self.order != "latency" or not self.mirrors:
            return
        import _thread

        results: dict[str, float | None] = {}
        lock = _thread.allocate_lock()
        pending = [len(self.mirrors)]

        def measure(url: str) -> None:
            best = None
            try:
                for _ in range(PROBES):
                    seconds = probe(url)
                    if seconds is None:
                        break
                    best = seconds if best is None else min(best, seconds)
            finally:
                with lock:
                    results[url] = best
                    pending[0] -= 1

        for url in self.mirrors:
            _thread.start_new_thread(measure, (url,))
        deadline = time.monotonic() + PROBES * PROBE_TIMEOUT + 1.0
        while time.monotonic() < deadline:
            with lock:
                if not pending[0]:
                    break
            time.sleep(0.002)
        with lock:
            measured = dict(results)
        for url in self.mirrors:
            seconds = measured.get(url)
            if seconds is None:
                self.down[url] = "unreachable"
            else:
                self.latency[url] = seconds
        listed = {url: i for i, url in enumerate(self.mirrors)}
        self.mirrors.sort(key=lambda url: (url in self.down, self.latency.get(url, 0.0), listed[url]))

    def describe(self) -> str:
        """One console line: the order the mirrors will be tried in."""
        if not self.mirrors:
            return ""
        parts = []
        for url in self.mirrors:
            if url in self.down:
                parts.append(f"{url} ({self.down[url]})")
            elif url in self.latency:
                parts.append(f"{url} ({self.latency[url] * 1000:.1f} ms)")
            else:
                parts.append(url)
        return f"mirrors ({self.order}): {', '.join(parts)}; then the origin {self.origin}"

    # -- the choice ---------------------------------------------------------------------------------------
    def for_layer(self, layer) -> list[str]:  # noqa: ANN001 - verify.Layer
        """The base URLs to try for ``layer``, in order: usable mirrors (public objects only), the origin last."""
        if not mirrorable(layer):
            return [self.origin]
        with self._lock:
            return [url for url in self.mirrors if url not in self.down] + [self.origin]

    def is_origin(self, url: str) -> bool:
        return url == self.origin

    def failed(self, url: str, why: str) -> None:
        """Stop using mirror ``url`` for this boot (one console line the first time)."""
        if self.is_origin(url):
            return
        with self._lock:
            if url in self.down:
                return
            self.down[url] = why
        self.say(f"mirror {url}: {why}; using the next source")

    def delivered(self, url: str, count: int) -> None:
        with self._lock:
            self.bytes[url] = self.bytes.get(url, 0) + count
