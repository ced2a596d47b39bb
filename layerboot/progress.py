"""Progress of long steps: a bar on a terminal (tqdm), plain periodic lines otherwise; never silent for long.

One helper for every long step (layer import, bake, squash, initrd build, kernel download, debootstrap, ISO and
OCI import, A/B update). It writes to stderr, so stdout keeps the results (digests, JSON).

* On a terminal (stderr is a tty, tqdm importable): a bar with the amount done, rate and elapsed time, and
  the current sub-step (e.g. debootstrap's "Unpacking libc6") after it. A ticker redraws it every second, so
  the clock moves while a command works without printing anything.
* Otherwise (a pipe, a log file, the journal): one line every :data:`PLAIN_INTERVAL` seconds while the step
  runs, ``layerboot: packing rootfs: 45% (120.0 MiB of 260.0 MiB), 12 s: <sub-step>``, and a closing line
  when any was printed. A step shorter than the interval prints nothing, so quick commands stay quiet.
* In layerbootd the same lines go to its log (``set_mode("log")``); ``set_mode("off")`` silences them.

``LAYERBOOT_PROGRESS=bar|plain|off`` overrides the automatic choice and ``LAYERBOOT_PROGRESS_INTERVAL`` the
seconds between plain lines. tqdm is optional: without it (a node image with Debian's packages only) a
terminal gets the plain lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

PLAIN_INTERVAL = 5.0          # seconds between plain lines: "never silent for more than a few seconds"
BAR_REFRESH = 1.0             # seconds between redraws of a terminal bar
MODES = ("auto", "bar", "plain", "log", "off")

log = logging.getLogger("layerboot.progress")
_mode = "auto"


def set_mode(mode: str) -> None:
    """Choose how progress is shown from now on: auto (bar on a tty, else plain), bar, plain, log or off."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}")
    _mode = mode


def human_size(size: float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def _amount(value: float, unit: str) -> str:
    return human_size(value) if unit == "B" else f"{value:.0f} {unit}"


def _interval(default: float) -> float:
    try:
        value = float(os.environ.get("LAYERBOOT_PROGRESS_INTERVAL", ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _effective_mode(stream: IO[str]) -> str:
    mode = os.environ.get("LAYERBOOT_PROGRESS", "") or _mode
    if mode not in MODES:
        mode = "auto"
    if mode == "auto":
        try:
            mode = "bar" if stream.isatty() else "plain"
        except (AttributeError, ValueError):
            mode = "plain"
    if mode == "bar":
        try:
            import tqdm  # noqa: F401
        except ImportError:
            mode = "plain"
    return mode


class Progress:
    """One long step. ``advance``/``update`` report the amount done, ``note`` the current sub-step.

    ``parse`` turns a command's output line into ``(done, total)`` (or None) when the runner streams lines in
    with :meth:`line`; other lines become the sub-step note.
    """

    def __init__(self, label: str, *, total: float | None = None, unit: str = "B",
                 parse: Callable[[str], tuple[float, float] | None] | None = None,
                 stream: IO[str] | None = None, interval: float = PLAIN_INTERVAL) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.parse = parse
        self.stream = stream or sys.stderr
        self.interval = _interval(interval)
        self.done: float = 0
        self.current = ""
        self.started = time.monotonic()
        self.printed = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.mode = _effective_mode(self.stream)
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=label, unit=unit if unit == "B" else f" {unit}",
                             unit_scale=unit == "B", unit_divisor=1024, file=self.stream, leave=True,
                             dynamic_ncols=True, mininterval=0.2)
        self._ticker: threading.Thread | None = None
        if self.mode != "off":
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    # -- reporting ---------------------------------------------------------------------------------------
    def advance(self, amount: float) -> None:
        with self._lock:
            self.done += amount
            if self._bar is not None:
                self._bar.update(amount)

    def update(self, done: float, total: float | None = None) -> None:
        done = int(done) if float(done).is_integer() else done
        total = int(total) if total is not None and float(total).is_integer() else total
        with self._lock:
            if total is not None and total != self.total:
                self.total = total
                if self._bar is not None:
                    self._bar.total = total
            if self._bar is not None and done > self.done:
                self._bar.update(done - self.done)
            self.done = max(self.done, done)

    def note(self, text: str) -> None:
        text = " ".join(text.split())[:120]
        with self._lock:
            self.current = text
            if self._bar is not None:
                self._bar.set_postfix_str(text, refresh=False)

    def line(self, text: str) -> None:
        """A line of a command's output: an amount when ``parse`` recognises it, else the sub-step note."""
        numbers = self.parse(text) if self.parse else None
        if numbers is not None:
            self.update(*numbers)
        else:
            self.note(text)

    def reader(self, handle: IO[bytes]) -> "CountingReader":
        """A file wrapper whose reads advance this progress by the bytes read."""
        return CountingReader(handle, self)

    # -- output ------------------------------------------------------------------------------------------
    def status(self) -> str:
        """``45% (120.0 MiB of 260.0 MiB), 12 s: note`` (the plain line after the label)."""
        elapsed = time.monotonic() - self.started
        with self._lock:
            done, total, note = self.done, self.total, self.current
        if total:
            amount = f"{min(100.0, 100.0 * done / total):.0f}% ({_amount(done, self.unit)} of " \
                     f"{_amount(total, self.unit)}), "
        elif done:
            amount = f"{_amount(done, self.unit)}, "
        else:
            amount = ""
        return f"{amount}{elapsed:.0f} s" + (f": {note}" if note else "")

    def _emit(self, text: str) -> None:
        self.printed += 1
        if self.mode == "log":
            log.info("%s", text)
            return
        try:
            print(f"layerboot: {text}", file=self.stream, flush=True)
        except (OSError, ValueError):
            pass

    def _tick(self) -> None:
        wait = BAR_REFRESH if self.mode == "bar" else self.interval
        while not self._closed.wait(wait):
            if self._bar is not None:
                with self._lock:
                    self._bar.refresh()
            else:
                self._emit(f"{self.label}: {self.status()}")

    def close(self, *, ok: bool = True) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            with self._lock:
                if ok and self.total and self.done < self.total:
                    self._bar.update(self.total - self.done)
                self._bar.close()
        elif self.printed and self.mode in ("plain", "log"):
            elapsed = time.monotonic() - self.started
            amount = f"{_amount(self.done, self.unit)} in " if self.done else ""
            self._emit(f"{self.label}: {'done' if ok else 'stopped'}, {amount}{elapsed:.0f} s")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(ok=exc_type is None)


class CountingReader:
    """Wraps a binary file: every read advances a :class:`Progress` by the bytes it returned."""

    def __init__(self, handle: IO[bytes], progress: Progress) -> None:
        self.handle = handle
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.progress.advance(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)  # type: ignore[attr-defined]
        self.progress.advance(count or 0)
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

