"""A minimal HTTP/1.1 client on ``_socket`` for stage1 (http.client would pull in the email package).

One request per connection (``Connection: close``); bodies by Content-Length, chunked encoding, or until close.
``http://host[:port]`` URLs only: the trust comes from the signed manifest and the per-layer sha256, not TLS.
"""

from __future__ import annotations

from .console import StageError
from .jsonlite import dumps


class HttpError(StageError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Response:
    def __init__(self, sock, status: int, reason: str, headers: dict[str, str], buffered: bytes) -> None:  # noqa: ANN001
        self._sock, self.status, self.reason, self.headers = sock, status, reason, headers
        self._buffer = buffered
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self._left = int(length) if length is not None and not self._chunked else -1
        self._chunk_left = 0
        self._done = self._left == 0

    def _recv(self) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        return self._sock.recv(262144)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            data = self._sock.recv(4096)
            if not data:
                raise HttpError("connection closed inside a chunked body")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def read_chunk(self) -> bytes:
        """Next piece of the body; b"" at its end. A short body raises HttpError (so callers can resume)."""
        if self._done:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                size = int(self._line().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self._done = True
                    return b""
                self._chunk_left = size
            data = self._recv()
            if not data:
                raise HttpError("connection closed inside a chunk")
            piece, rest = data[:self._chunk_left], data[self._chunk_left:]
            self._buffer = rest + self._buffer
            self._chunk_left -= len(piece)
            if self._chunk_left == 0:
                self._line()
            return piece
        data = self._recv()
        if not data:
            if self._left > 0:
                raise HttpError(f"connection closed with {self._left} bytes of the body missing")
            self._done = True
            return b""
        if self._left >= 0:
            data = data[:self._left]
            self._left -= len(data)
            self._done = self._left == 0
        return data

    def read(self, limit: int = 16 << 20) -> bytes:
        parts, size = [], 0
        while True:
            piece = self.read_chunk()
            if not piece:
                return b"".join(parts)
            size += len(piece)
            if size > limit:
                raise HttpError(f"response body larger than {limit} bytes")
            parts.append(piece)

    def close(self) -> None:
        self._sock.close()


def split_url(url: str) -> tuple[str, int, str]:
    if not url.startswith("http://"):
        raise StageError(f"{url}: only http:// URLs are supported")
    rest = url[len("http://"):]
    hostport, slash, path = rest.partition("/")
    if hostport.startswith("["):   # an IPv6 literal: http://[fd00::1]:8080/
        host, _, after = hostport[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host or not port.isdigit() and port:
        raise StageError(f"{url}: cannot tell the host and port apart")
    return host, int(port or 80), "/" + path if slash else "/"


def request(method: str, url: str, *, token: str = "", headers: dict[str, str] | None = None,
            body: bytes = b"", timeout: float = 10.0) -> Response:
    """Send a request and return the response with its headers read (status not checked)."""
    import _socket

    host, port, path = split_url(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {f'[{host}]' if ':' in host else host}:{port}", "Connection: close",
             "User-Agent: layerboot-stage1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        try:
            _socket.inet_aton(host)
            family, address = _socket.AF_INET, (host, port)
        except OSError:  # a name: resolve it (bytes, so the idna codec is not needed)
            family, _, _, _, address = _socket.getaddrinfo(host.encode("ascii"), port, 0, _socket.SOCK_STREAM)[0]
        sock = _socket.socket(family, _socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise HttpError(f"cannot resolve {host}: {err}") from None
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                raise HttpError(f"{host}:{port} closed the connection before answering")
            data += piece
            if len(data) > 65536:
                raise HttpError(f"{host}:{port} sent oversized response headers")
    except OSError as err:
        sock.close()
        raise HttpError(f"{method} {url.split('?')[0]}: {err.strerror or err}") from None
    except HttpError:
        sock.close()
        raise
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        sock.close()
        raise HttpError(f"{host}:{port} sent a malformed status line {status_line!r}") from None
    parsed = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return Response(sock, status, parts[2] if len(parts) > 2 else "", parsed, rest)


def get_bytes(url: str, *, token: str = "", timeout: float = 10.0, limit: int = 16 << 20) -> bytes:
    response = request("GET", url, token=token, timeout=timeout)
    try:
        if response.status != 200:
            detail = response.read(4096).decode("utf-8", "replace").strip().splitlines()
            raise HttpError(f"GET {url.split('?')[0]}: {response.status} {response.reason}"
                            + (f" ({detail[0][:200]})" if detail else ""), response.status)
        return response.read(limit)
    except OSError as err:
        raise HttpError(f"GET {url.split('?')[0]}: {err.strerror or err}") from None
    finally:
        response.close()


def post_json(url: str, document: object, *, token: str = "", timeout: float = 3.0) -> int:
    body = dumps(document).encode("utf-8")
    response = request("POST", url, token=token, body=body, timeout=timeout,
                       headers={"Content-Type": "application/json"})
    try:
        return response.status
    finally:
        response.close()
