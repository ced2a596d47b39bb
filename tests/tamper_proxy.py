"""An HTTP proxy on 127.0.0.1 in front of layerbootd for the streaming tests: it counts the body bytes it passes
per path and, when armed, flips one byte of one object at one offset in whatever it forwards (a man in the
middle, or a mirror serving a damaged copy). While layerbootd is down it answers 502, as a real proxy would."""

from __future__ import annotations

import http.client
import http.server
import re
import threading
from collections import defaultdict

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class TamperProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent: dict[str, int] = defaultdict(int)     # path -> body bytes of 2xx answers passed to the client
        self.ranges: list[tuple[str, str]] = []          # (path, Content-Range) of every partial answer
        self.flipped = 0
        self.target: tuple[str, int] | None = None       # (object path, offset in the object)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = bytearray(reply.read())
                    status, reason, answer = reply.status, reply.reason, reply.getheaders()
                    conn.close()
                except OSError as err:
                    status, reason, answer, data = 502, "Bad Gateway", [], bytearray(f"{err}\n".encode())
                data = proxy._tamper(self.path, answer, data)
                if 200 <= status < 300:
                    with proxy.lock:
                        proxy.sent[self.path.split("?")[0]] += len(data)
                self.send_response(status, reason)
                for key, value in answer:
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(bytes(data))
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def arm(self, digest: str, offset: int) -> None:
        self.target = (f"/objects/{digest}", offset)

    def bytes_for(self, digest: str) -> int:
        with self.lock:
            return self.sent[f"/objects/{digest}"]

    def _tamper(self, path: str, headers: list[tuple[str, str]], data: bytearray) -> bytearray:
        for key, value in headers:
            if key.lower() == "content-range":
                with self.lock:
                    self.ranges.append((path.split("?")[0], value))
        if self.target is None or path.split("?")[0] != self.target[0]:
            return data
        start = 0
        for key, value in headers:
            match = CONTENT_RANGE.match(value) if key.lower() == "content-range" else None
            if match:
                start = int(match.group(1))
        where = self.target[1] - start
        if 0 <= where < len(data):
            data[where] ^= 0x40
            self.flipped += 1
        return data

    def __enter__(self) -> "TamperProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
