"""A minimal HTTP/1.1 client on ``_socket`` for stage1 (http.client would pull in the email package).

One request per connection (``Connection: close``); bodies by Content-Length, chunked encoding, or until close.
``http://host[:port]`` URLs only: the trust comes from the signed manifest and the per-layer sha256, not TLS.

The framing is parsed strictly, because a hostile network controls every byte of it: a status line, header,
Content-Length, Content-Range or chunk-size line that is not exactly what HTTP/1.1 allows is one HttpError
naming the URL and the offending value (never a ValueError from ``int()``), and lines and numbers are bounded.
Bodies are read with :meth:`Response.readinto` into the caller's buffer (``recv_into``: no bytes objects on
the per-byte path; see bench/README.md for what the copies cost).
"""

from __future__ import annotations

from .console import StageError
from .jsonlite import dumps

HEAD_LIMIT = 65536          # status line + headers
LINE_LIMIT = 4096           # a chunk-size or trailer line
TRAILER_LIMIT = 64          # trailer lines after the last chunk
NUMBER_DIGITS = 18          # Content-Length / Content-Range values: below 10**18 (no overflow, no 5000 digits)
CHUNK_DIGITS = 15           # hex digits of a chunk size: below 2**60
_HEX = frozenset(b"0123456789abcdefABCDEF")


class HttpError(StageError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _shown(value: str | bytes, limit: int = 40) -> str:
    """A hostile value for an error line: cut short, non-printable characters escaped by repr."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def parse_number(value: str, what: str) -> int:
    """A non-negative decimal HTTP number (Content-Length, Content-Range parts), strictly."""
    if not value or len(value) > NUMBER_DIGITS or not value.isascii() or not value.isdigit():
        raise HttpError(f"{what}: malformed value {_shown(value)}")
    return int(value)


def parse_content_range(value: str, what: str) -> tuple[int, int, int | None]:
    """``bytes FIRST-LAST/TOTAL`` (TOTAL may be ``*``) -> (first, last, total or None)."""
    unit, _, spec = value.strip().partition(" ")
    span, slash, total = spec.strip().partition("/")
    first, dash, last = span.partition("-")
    if unit != "bytes" or not slash or not dash:
        raise HttpError(f"{what}: malformed Content-Range {_shown(value)}")
    start, end = parse_number(first, what + " Content-Range"), parse_number(last, what + " Content-Range")
    size = None if total == "*" else parse_number(total, what + " Content-Range")
    if end < start or (size is not None and end >= size):
        raise HttpError(f"{what}: inconsistent Content-Range {_shown(value)}")
    return start, end, size


class Response:
    """Status, lower-cased headers, and the body through :meth:`readinto` (or :meth:`read` for small ones)."""

    def __init__(self, sock, status: int, reason: str, headers: dict[str, str], buffered: bytes,  # noqa: ANN001
                 what: str = "response") -> None:
        self._sock, self.status, self.reason, self.headers = sock, status, reason, headers
        self.what = what
        self._buffer = buffered
        encoding = headers.get("transfer-encoding")
        if encoding is not None and encoding.strip().lower() != "chunked":
            raise HttpError(f"{what}: unsupported Transfer-Encoding {_shown(encoding)}")
        self._chunked = encoding is not None
        length = headers.get("content-length")
        if self._chunked or length is None:
            self._left = -1
        else:
            self._left = parse_number(length.strip(), f"{what}: Content-Length")
        self._chunk_left = 0
        self._done = self._left == 0
        self.reusable = False      # exchange(keep_alive=True): the socket may carry the next request

    # -- framing ------------------------------------------------------------------------------------------
    def _line(self) -> bytes:
        while True:
            line, found, rest = self._buffer.partition(b"\r\n")
            if found:
                self._buffer = rest
                return line
            if len(self._buffer) > LINE_LIMIT:
                raise HttpError(f"{self.what}: chunked body line longer than {LINE_LIMIT} bytes")
            data = self._sock.recv(LINE_LIMIT)
            if not data:
                raise HttpError(f"{self.what}: connection closed inside a chunked body")
            self._buffer += data

    def _chunk_size(self) -> int:
        line = self._line()
        text = line.split(b";", 1)[0].strip(b" \t")
        if not text or len(text) > CHUNK_DIGITS or not _HEX.issuperset(text):
            raise HttpError(f"{self.what}: malformed chunk size {_shown(line)}")
        return int(text, 16)

    def _end_of_chunk(self) -> None:
        line = self._line()
        if line:
            raise HttpError(f"{self.what}: chunk followed by {_shown(line)} instead of CRLF")

    def _trailers(self) -> None:
        for _ in range(TRAILER_LIMIT):
            if not self._line():
                return
        raise HttpError(f"{self.what}: more than {TRAILER_LIMIT} trailer lines")

    def _fill(self, view: memoryview, want: int) -> int:
        """Up to ``want`` bytes into ``view``: left-over header bytes first, else one ``recv_into``."""
        if self._buffer:
            count = min(want, len(self._buffer))
            view[:count] = self._buffer[:count]
            self._buffer = self._buffer[count:]
            return count
        return self._sock.recv_into(view, want)

    # -- body -----------------------------------------------------------------------------------------------
    def readinto(self, view: memoryview) -> int:
        """Read the next body bytes into ``view`` (as many as one receive gives); 0 at the body's end.

        A body cut short raises HttpError (so callers can resume with Range); so does any malformed framing.
        """
        if self._done or not len(view):
            return 0
        if self._chunked:
            if self._chunk_left == 0:
                size = self._chunk_size()
                if size == 0:
                    self._trailers()
                    self._done = True
                    return 0
                self._chunk_left = size
            count = self._fill(view, min(len(view), self._chunk_left))
            if not count:
                raise HttpError(f"{self.what}: connection closed inside a chunk")
            self._chunk_left -= count
            if self._chunk_left == 0:
                self._end_of_chunk()
            return count
        count = self._fill(view, len(view) if self._left < 0 else min(len(view), self._left))
        if not count:
            if self._left > 0:
                raise HttpError(f"{self.what}: connection closed with {self._left} bytes of the body missing")
            self._done = True
            return 0
        if self._left > 0:
            self._left -= count
            self._done = self._left == 0
        return count

    def read(self, limit: int = 16 << 20) -> bytes:
        """The whole (small) body; more than ``limit`` bytes is an HttpError."""
        body, scratch = bytearray(), memoryview(bytearray(65536))
        while count := self.readinto(scratch):
            body += scratch[:count]
            if len(body) > limit:
                raise HttpError(f"{self.what}: response body larger than {limit} bytes")
        return bytes(body)

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
    port = port or "80"
    if not host:
        raise StageError(f"{url}: cannot tell the host and port apart")
    if not port.isascii() or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise StageError(f"{url}: invalid port {port!r}")
    return host, int(port), "/" + path if slash else "/"


def _parse_head(head: bytes, what: str) -> tuple[int, str, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isascii() \
            or not parts[1].isdigit():
        raise HttpError(f"{what}: malformed status line {_shown(status_line, 80)}")
    headers: dict[str, str] = {}
    for line in header_lines:
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            raise HttpError(f"{what}: malformed header line {_shown(line, 80)}")
        key, value = key.lower(), value.strip()
        if key in ("content-length", "transfer-encoding") and key in headers and headers[key] != value:
            raise HttpError(f"{what}: conflicting {key} headers {_shown(headers[key])} and {_shown(value)}")
        headers[key] = value
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def open_socket(host: str, port: int, timeout: float):  # noqa: ANN201 - a connected _socket.socket
    """A TCP connection to ``host``:``port`` (an address, or a name resolved here); HttpError when it fails."""
    import _socket

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
    except OSError as err:
        sock.close()
        raise HttpError(f"{host}:{port}: {err.strerror or err}") from None
    return sock


def exchange(sock, method: str, url: str, *, token: str = "", headers: dict[str, str] | None = None,  # noqa: ANN001
             body: bytes = b"", keep_alive: bool = False) -> Response:
    """Send one request on the connected ``sock`` and read the response head (status not checked).

    With ``keep_alive`` the request does not ask the server to close: once the body is read, the caller may
    send the next request on the same socket (streamd.py) unless ``Response.reusable`` is false.
    """
    host, port, path = split_url(url)
    what = f"{method} {url.split('?')[0]}"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {f'[{host}]' if ':' in host else host}:{port}",
             "Connection: keep-alive" if keep_alive else "Connection: close", "User-Agent: layerboot-stage1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > HEAD_LIMIT:
                raise HttpError(f"{what}: {host}:{port} sent oversized response headers")
            piece = sock.recv(65536)
            if not piece:
                raise HttpError(f"{what}: {host}:{port} closed the connection before answering")
            data += piece
    except OSError as err:
        raise HttpError(f"{what}: {err.strerror or err}") from None
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    if len(head_bytes) > HEAD_LIMIT:
        raise HttpError(f"{what}: {host}:{port} sent oversized response headers")
    status, reason, parsed = _parse_head(head_bytes, what)
    response = Response(sock, status, reason, parsed, rest, what)
    response.reusable = keep_alive and parsed.get("connection", "").strip().lower() != "close"
    return response


def request(method: str, url: str, *, token: str = "", headers: dict[str, str] | None = None,
            body: bytes = b"", timeout: float = 10.0) -> Response:
    """Send a request on a new connection and return the response with its headers read (status not checked)."""
    host, port, _ = split_url(url)
    try:
        sock = open_socket(host, port, timeout)
    except HttpError as err:
        if str(err).startswith("cannot resolve"):
            raise
        raise HttpError(f"{method} {url.split('?')[0]}: {str(err).split(': ', 1)[1]}") from None
    try:
        return exchange(sock, method, url, token=token, headers=headers, body=body)
    except HttpError:
        sock.close()
        raise


def get_bytes(url: str, *, token: str = "", timeout: float = 10.0, limit: int = 16 << 20) -> bytes:
    response = request("GET", url, token=token, timeout=timeout)
    try:
        if response.status != 200:
            try:
                detail = response.read(4096).decode("utf-8", "replace").strip().splitlines()
            except HttpError:
                detail = []
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
