"""stage1's HTTP client and layer fetcher against a real local HTTP server that misbehaves on purpose."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from layerboot.initrd.stage1.fetch import FetchError, fetch_layers
from layerboot.initrd.stage1.http import HttpError, get_bytes, post_json, split_url
from layerboot.initrd.stage1.verify import Layer


class Server:
    """Serves /objects/<digest> from ``blobs``; can cut a body short, ignore Range, or chunk the reply."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.cut_first = 0          # cut this many responses after half the body
        self.ignore_range = False
        self.chunked = False
        self.requests: list[tuple[str, str, str]] = []   # (path, Range, Authorization)
        self.posted: list[bytes] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range", ""),
                                       self.headers.get("Authorization", "")))
                if self.headers.get("Authorization") != "Bearer tok":
                    self.send_error(401)
                    return
                data = outer.blobs.get(self.path.rsplit("/", 1)[-1])
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range")
                if ranged and not outer.ignore_range:
                    start = int(ranged.split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if outer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 1000):
                        piece = body[i:i + 1000]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if outer.cut_first > 0:
                    outer.cut_first -= 1
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_POST(self) -> None:
                outer.posted.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, data: bytes) -> Layer:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return Layer(digest, len(data), f"objects/{digest}")


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.httpd.shutdown()


def blob(n: int, seed: int) -> bytes:
    return hashlib.sha512(bytes([seed])).digest() * (n // 64) + b"x" * (n % 64)


def test_parallel_fetch_verifies_and_keeps_manifest_order(server: Server, tmp_path: Path) -> None:
    layers = tuple(server.add(blob(n, i)) for i, n in enumerate((300_000, 10, 5_000_000, 0, 64)))
    paths = fetch_layers(server.url, "tok", layers, str(tmp_path), timeout=5)
    assert [Path(p).name for p in paths] == [layer.digest for layer in layers]
    assert all(Path(p).read_bytes() == server.blobs[layer.digest] for p, layer in zip(paths, layers))
    assert not list(tmp_path.glob("*.part"))
    assert {auth for _, _, auth in server.requests} == {"Bearer tok"}


def test_a_cut_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    layer = server.add(blob(2_000_000, 7))
    server.cut_first = 2
    [path] = fetch_layers(server.url, "tok", (layer,), str(tmp_path), retries=3, timeout=5)
    assert Path(path).read_bytes() == server.blobs[layer.digest]
    ranges = [r for _, r, _ in server.requests]
    assert ranges[0] == "" and ranges[1] == "bytes=1000000-" and ranges[2] == "bytes=1500000-"


def test_a_server_that_ignores_range_restarts_the_hash(server: Server, tmp_path: Path) -> None:
    layer = server.add(blob(1_000_000, 8))
    server.cut_first, server.ignore_range = 1, True
    [path] = fetch_layers(server.url, "tok", (layer,), str(tmp_path), retries=2, timeout=5)
    assert Path(path).read_bytes() == server.blobs[layer.digest]


def test_chunked_responses_are_decoded(server: Server, tmp_path: Path) -> None:
    server.chunked = True
    layer = server.add(blob(123_457, 9))
    [path] = fetch_layers(server.url, "tok", (layer,), str(tmp_path), timeout=5)
    assert Path(path).read_bytes() == server.blobs[layer.digest]


def test_tampered_layer_is_refused_and_nothing_is_left(server: Server, tmp_path: Path) -> None:
    good = server.add(blob(100_000, 1))
    bad = server.add(blob(50_000, 2))
    server.blobs[bad.digest] = server.blobs[bad.digest][:-1] + b"!"
    with pytest.raises(FetchError, match=f"layer {bad.digest[:12]} failed verification: got 50000 bytes"):
        fetch_layers(server.url, "tok", (good, bad), str(tmp_path), retries=1, timeout=5)
    assert not (tmp_path / bad.digest).exists() and not list(tmp_path.glob("*.part"))
    server.blobs[bad.digest] += b"extra"
    with pytest.raises(FetchError, match="failed verification: got 5000[1-5] bytes"):
        fetch_layers(server.url, "tok", (bad,), str(tmp_path), retries=1, timeout=5)


def test_a_server_sending_far_more_than_signed_is_cut_off(server: Server, tmp_path: Path) -> None:
    layer = server.add(b"small")
    server.blobs[layer.digest] = b"x" * 20_000_000
    with pytest.raises(FetchError, match="failed verification: got ") as caught:
        fetch_layers(server.url, "tok", (layer,), str(tmp_path), retries=1, timeout=5)
    received = int(str(caught.value).split("got ")[1].split()[0])
    assert 5 < received <= 5 + 262144, "read far past the signed size"
    assert not list(tmp_path.iterdir())


def test_missing_layer_and_bad_token_fail_without_retrying(server: Server, tmp_path: Path) -> None:
    missing = Layer("f" * 64, 10, "objects/" + "f" * 64)
    with pytest.raises(FetchError, match="404"):
        fetch_layers(server.url, "tok", (missing,), str(tmp_path), retries=3, timeout=5)
    assert len(server.requests) == 1
    layer = server.add(b"data")
    with pytest.raises(FetchError, match="401"):
        fetch_layers(server.url, "wrong", (layer,), str(tmp_path), retries=3, timeout=5)


def test_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpError, match="Connection refused"):
        get_bytes(f"http://127.0.0.1:{port}/nodes/x/manifest", token="t", timeout=2)
    layer = Layer("e" * 64, 1, "objects/" + "e" * 64)
    with pytest.raises(FetchError, match="Connection refused"):
        fetch_layers(f"http://127.0.0.1:{port}", "t", (layer,), str(tmp_path), retries=1, timeout=2)


class RecordingCache:
    """The LayerCache seam (initrd/stage1/cache.py): lookup before fetching, admit after verifying."""

    def __init__(self, have: dict[str, str], root: Path) -> None:
        self.have, self.root, self.admitted = have, root, []

    def lookup(self, digest: str) -> str | None:
        return self.have.get(digest)

    def admit(self, digest: str, path: str) -> str:
        self.admitted.append(digest)
        target = self.root / digest
        Path(path).rename(target)
        return str(target)


def test_cache_is_asked_first_and_given_verified_layers(server: Server, tmp_path: Path) -> None:
    cached = server.add(b"cached layer")
    fresh = server.add(b"fresh layer")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / cached.digest).write_bytes(b"cached layer")
    cache = RecordingCache({cached.digest: str(tmp_path / "c" / cached.digest)}, tmp_path / "c")
    paths = fetch_layers(server.url, "tok", (cached, fresh), str(tmp_path / "dl"), timeout=5, cache=cache)
    assert paths == [str(tmp_path / "c" / cached.digest), str(tmp_path / "c" / fresh.digest)]
    assert cache.admitted == [fresh.digest]
    assert [p for p, _, _ in server.requests] == [f"/objects/{fresh.digest}"]


def test_get_bytes_post_json_and_url_parsing(server: Server) -> None:
    layer = server.add(b"hello")
    assert get_bytes(f"{server.url}/{layer.path}", token="tok") == b"hello"
    with pytest.raises(HttpError, match="401"):
        get_bytes(f"{server.url}/{layer.path}", token="nope")
    assert post_json(f"{server.url}/nodes/m/events", {"stage": "net", "ok": True}) == 201
    assert server.posted == [b'{"stage": "net", "ok": true}']
    assert split_url("http://10.0.2.2:8080/a/b?x=1") == ("10.0.2.2", 8080, "/a/b?x=1")
    assert split_url("http://server") == ("server", 80, "/")
    assert split_url("http://[fd00::1]:8080/nodes/x") == ("fd00::1", 8080, "/nodes/x")   # IPv6 boot networks
    assert split_url("http://[fd00::1]") == ("fd00::1", 80, "/")
    with pytest.raises(Exception, match="only http://"):
        split_url("https://x/")


class CopyingCache(RecordingCache):
    """Like the real LayerCache when the cache disk is another filesystem than /run: admit copies."""

    def admit(self, digest: str, path: str) -> str:
        self.admitted.append(digest)
        target = self.root / digest
        target.write_bytes(Path(path).read_bytes())
        return str(target)


def test_a_layer_copied_into_the_cache_leaves_no_second_copy_in_ram(server: Server, tmp_path: Path) -> None:
    fresh = server.add(b"fresh layer")
    (tmp_path / "c").mkdir()
    cache = CopyingCache({}, tmp_path / "c")
    paths = fetch_layers(server.url, "tok", (fresh,), str(tmp_path / "dl"), timeout=5, cache=cache)
    assert paths == [str(tmp_path / "c" / fresh.digest)]
    assert list((tmp_path / "dl").iterdir()) == []   # the /run tmpfs copy is gone once the cache holds it
