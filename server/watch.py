"""Watch incoming/ with watchdog (inotify) and hand completed files to the bake queue on the event loop.

A file counts when it is closed after writing or renamed into a node's area (SFTP clients that upload to a
temporary name and rename it). The queue decides what is complete (name rules) and sweeps every few seconds
anyway, so a lost event only delays a bake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[Path], None]) -> None:
        self.loop = loop
        self.callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            target = event.dest_path
        elif isinstance(event, FileClosedEvent):
            target = event.src_path
        else:
            return
        path = Path(target.decode() if isinstance(target, bytes) else target)
        self.loop.call_soon_threadsafe(self.callback, path)


def start_watcher(directory: Path, loop: asyncio.AbstractEventLoop, callback: Callable[[Path], None]) -> Any:
    """Start a watchdog observer on ``directory`` (recursive); returns it (call ``.stop()``)."""
    observer = Observer()
    observer.schedule(_Handler(loop, callback), str(directory), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
