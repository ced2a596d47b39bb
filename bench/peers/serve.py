"""A static HTTP server on 127.0.0.1 that counts the body bytes it sends, per request and per boot.

QEMU's user network shows the host's loopback to the guest as 10.0.2.2, so the peers fetch their rootfs
from here. The counts are what the second-boot benchmark reports: a peer that refetches the whole image
after a one-file change shows the image's full size again.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO


@dataclass
class Request:
    path: str
    status: int
    bytes: int


@dataclass
class Traffic:
    """Body bytes sent since the last reset, and the requests that sent them."""

    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def bytes(self) -> int:
        with self.lock:
            return sum(r.bytes for r in self.requests)

    def add(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def count(self, request: Request, n: int) -> None:
        with self.lock:
            request.bytes += n

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; each response is recorded when its status is sent and its body bytes as they go out
    (counted just before each write, so a client that has read a body always finds it counted)."""

    traffic: Traffic

    def __init__(self, *args: object, traffic: Traffic, **kwargs: object) -> None:
        self.traffic = traffic
        self._request: Request | None = None
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def send_response(self, code: int, message: str | None = None) -> None:
        self._request = Request(self.path, code, 0)
        self.traffic.add(self._request)
        super().send_response(code, message)

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        while chunk := source.read(1 << 20):
            if self._request is not None:
                self.traffic.count(self._request, len(chunk))
            outputfile.write(chunk)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


class CountingServer:
    """Serve ``root`` on 127.0.0.1 (a free port unless one is given) from a thread; a context manager."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self.traffic = Traffic()
        handler = partial(_Handler, directory=str(root), traffic=self.traffic)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def guest_url(self, name: str) -> str:
        """The URL a QEMU user-net guest uses for ``name`` under the served root."""
        return f"http://10.0.2.2:{self.port}/{name}"

    def publish(self, name: str, source: Path) -> str:
        """Make ``source`` available as ``name`` (a symlink into the cache) and return its guest URL."""
        link = self.root / name
        link.unlink(missing_ok=True)
        link.symlink_to(source.resolve())
        return self.guest_url(name)

    def __enter__(self) -> "CountingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class CountingRelay:
    """Forward 127.0.0.1:<port> to a local server and count the bytes it sends back, per connection.

    For a server the benchmark does not own (layerbootd): bytes on the wire, headers included, so they
    slightly over-count compared with the body bytes CountingServer reports.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.traffic = Traffic()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, name="bench-relay", daemon=True)

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        record = Request(f"tcp:{self.target_port}", 0, 0)
        self.traffic.add(record)
        back = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
        back.start()
        _pump(upstream, client, lambda n: self.traffic.count(record, n))
        back.join(timeout=5)
        client.close()
        upstream.close()

    def __enter__(self) -> "CountingRelay":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()


def _pump(source: socket.socket, dest: socket.socket, counted: Callable[[int], None] | None = None) -> None:
    """Copy until EOF or error (counting each chunk before it is sent), then half-close ``dest``."""
    try:
        while data := source.recv(1 << 16):
            if counted is not None:
                counted(len(data))
            dest.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dest.shutdown(socket.SHUT_WR)
        except OSError:
            pass
