"""stage1's HTTP client and layer fetcher against a real local HTTP server that misbehaves on purpose."""

import hashlib
import os
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
    """The LayerCache seam (initrd/stage1/cache.py): lookup before fetching, admit after verifying.

    Like the real one, it offers ``tmp_path`` on its own filesystem so a download lands there directly.
    """

    def __init__(self, have: dict[str, str], root: Path) -> None:
        self.have, self.root, self.admitted = have, root, []

    def lookup(self, layer: Layer, fetch_tree=None) -> str | None:  # noqa: ANN001
        return self.have.get(layer.digest)

    def tmp_path(self, digest: str) -> str:
        return str(self.root / f".{digest}.tmp")

    def admit(self, layer: Layer, path: str, *, verified: bool = False, fetch_tree=None) -> str:  # noqa: ANN001
        self.admitted.append((layer.digest, verified, Path(path).parent == self.root))
        target = self.root / layer.digest
        Path(path).rename(target)
        return str(target)


def test_cache_is_asked_first_and_downloads_land_on_the_cache_disk(server: Server, tmp_path: Path) -> None:
    cached = server.add(b"cached layer")
    fresh = server.add(b"fresh layer")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / cached.digest).write_bytes(b"cached layer")
    cache = RecordingCache({cached.digest: str(tmp_path / "c" / cached.digest)}, tmp_path / "c")
    paths = fetch_layers(server.url, "tok", (cached, fresh), str(tmp_path / "dl"), timeout=5, cache=cache)
    assert paths == [str(tmp_path / "c" / cached.digest), str(tmp_path / "c" / fresh.digest)]
    # Downloaded straight onto the cache filesystem and handed over as already verified: no copy in RAM.
    assert cache.admitted == [(fresh.digest, True, True)]
    assert [p for p, _, _ in server.requests] == [f"/objects/{fresh.digest}"]
    assert list((tmp_path / "dl").iterdir()) == []


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
    """Like the real LayerCache when the layer is in RAM (another filesystem): admit copies."""

    def admit(self, layer: Layer, path: str, *, verified: bool = False, fetch_tree=None) -> str:  # noqa: ANN001
        self.admitted.append((layer.digest, verified, False))
        target = self.root / layer.digest
        target.write_bytes(Path(path).read_bytes())
        return str(target)


def test_layers_ram_keeps_the_download_in_ram_and_gives_the_cache_a_copy(server: Server, tmp_path: Path) -> None:
    fresh = server.add(b"fresh layer")
    (tmp_path / "c").mkdir()
    cache = CopyingCache({}, tmp_path / "c")
    paths = fetch_layers(server.url, "tok", (fresh,), str(tmp_path / "dl"), timeout=5, cache=cache, on_disk=False)
    assert paths == [str(tmp_path / "dl" / fresh.digest)]
    assert (tmp_path / "c" / fresh.digest).read_bytes() == b"fresh layer"
    assert cache.admitted == [(fresh.digest, False, False)]       # the cache re-hashes what it copies


class RawServer:
    """Answers every connection with the same raw bytes: the malformed responses a hostile network can send."""

    def __init__(self, reply: bytes) -> None:
        import socket

        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(4096)
                    if not piece:
                        break
                    data += piece
                try:
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


BODY = b"0123456789"
GOOD_LAYER = Layer(hashlib.sha256(BODY).hexdigest(), len(BODY), "objects/x")
MALFORMED = {
    "Content-Length with letters": (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n" + BODY,
                                    r"Content-Length: malformed value '1x'"),
    "negative Content-Length": (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n" + BODY,
                                r"Content-Length: malformed value '-5'"),
    "5000-digit Content-Length": (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n" + BODY,
                                  r"Content-Length: malformed value '9999.*\.\.\.'"),
    "non-ASCII digits": ("HTTP/1.1 200 OK\r\nContent-Length: ١٠\r\n\r\n".encode() + BODY,
                         r"Content-Length: malformed value"),
    "conflicting Content-Length": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n" + BODY,
                                   r"conflicting content-length headers '10' and '11'"),
    "chunk size not hex": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + BODY + b"\r\n0\r\n\r\n",
                           r"malformed chunk size 'zz'"),
    "5000-digit chunk size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 5000 + b"\r\n",
                              r"malformed chunk size 'f{40}\.\.\.'"),
    "endless chunk-size line": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 20000,
                                r"chunked body line longer than 4096 bytes"),
    "huge chunk size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\n" + BODY,
                        r"malformed chunk size 'f{20}'"),
    "chunk without its CRLF": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + BODY + b"XX0\r\n\r\n",
                               r"chunk followed by 'XX0' instead of CRLF"),
    "unknown Transfer-Encoding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + BODY,
                                  r"unsupported Transfer-Encoding 'gzip'"),
    "bad status line": (b"HTTP/1.1 2000 OK\r\n\r\n" + BODY, r"malformed status line 'HTTP/1.1 2000 OK'"),
    "not HTTP at all": (b"SSH-2.0-OpenSSH\r\n\r\n", r"malformed status line 'SSH-2.0-OpenSSH'"),
    "header without a colon": (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n" + BODY,
                               r"malformed header line 'broken header'"),
    "endless headers": (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 20000, r"oversized response headers"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_response_is_one_clear_error_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    reply, message = MALFORMED[case]
    raw = RawServer(reply)
    try:
        with pytest.raises(FetchError, match=message) as caught:
            fetch_layers(raw.url, "t", (GOOD_LAYER,), str(tmp_path), retries=0, timeout=5)
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"layer {GOOD_LAYER.digest[:12]}: ")
        assert list(tmp_path.iterdir()) == []          # no .part file, nothing else
        with pytest.raises(HttpError, match=message):
            get_bytes(f"{raw.url}/nodes/x/manifest", timeout=5)
    finally:
        raw.close()


def test_a_malformed_content_range_on_resume_is_refused(tmp_path: Path) -> None:
    raw = RawServer(b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 5-x/10\r\nContent-Length: 5\r\n\r\n56789")
    try:
        from layerboot.initrd.stage1 import fetch as fetchmod
        from layerboot.initrd.stage1.hashing import HashSink

        with HashSink() as sink:
            sink.buffer()[:5] = b"01234"
            sink.push(5)
            with pytest.raises(HttpError, match=r"malformed value 'x'"):
                fetchmod._attempt(f"{raw.url}/objects/x", "t", sink, 5, 10)
    finally:
        raw.close()


@pytest.mark.parametrize("threaded", [False, True])
def test_hash_sink_writes_and_hashes_in_order_and_restarts(tmp_path: Path, threaded: bool) -> None:
    from layerboot.initrd.stage1.hashing import HashSink, hash_file

    data = bytes(range(256)) * 40_000 + b"tail"
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    try:
        with HashSink(fd, threaded=threaded, size=65536) as sink:
            for noise in (b"a" * 100_000, data):                 # the first pass is thrown away by restart()
                if noise is data:
                    sink.restart()
                view = memoryview(noise)
                while view:
                    buffer = sink.buffer()
                    count = min(len(buffer), len(view), 50_000)
                    buffer[:count] = view[:count]
                    sink.push(count)
                    view = view[count:]
            assert sink.hexdigest() == hashlib.sha256(data).hexdigest() and sink.size == len(data)
    finally:
        os.close(fd)
    assert out.read_bytes() == data
    assert hash_file(str(out)) == (hashlib.sha256(data).hexdigest(), len(data))


def test_no_space_left_is_one_clear_line_without_retries(server: Server, tmp_path: Path) -> None:
    from layerboot.run import run

    small = tmp_path / "small"
    small.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small])
    try:
        layer = server.add(blob(3_000_000, 5))
        with pytest.raises(FetchError, match=rf"layer {layer.digest[:12]} \(3.0 MB\): no space left in {small}"):
            fetch_layers(server.url, "tok", (layer,), str(small), retries=3, timeout=5)
        assert len(server.requests) == 1 and list(small.iterdir()) == []
    finally:
        run(["umount", small])


# -- layerboot.verify=blocks (issue 20) -----------------------------------------------------------------------
# This host's kernel has no dm-verity: the attach is recorded here (the real one runs in the QEMU boot,
# tests/test_boot_qemu.py::test_verify_blocks_boot_attaches_fetched_layers_through_dm_verity).
def _with_tree(server: Server, data: bytes, *, served: bytes | None = None, tree: bytes | None = None) -> Layer:
    """A layer of ``data`` with a dm-verity tree in its signed entry; the server sends ``served`` for it."""
    from layerboot.initrd.stage1.verify import Verity
    from layerboot.overlays.verity import merkle_tree

    import tempfile

    with tempfile.NamedTemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        made = merkle_tree(Path(handle.name))
    layer = server.add(data)
    server.blobs[layer.digest] = data if served is None else served
    tree_layer = server.add(made.tree)
    if tree is not None:
        server.blobs[tree_layer.digest] = tree
    return Layer(layer.digest, layer.size, layer.path,
                 verity=Verity(made.root, tree_layer.digest, len(made.tree), tree_layer.path))


class Attaches:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from layerboot.initrd.stage1 import localverity

        self.calls: list[tuple[bytes, bytes, str]] = []
        monkeypatch.setattr(localverity, "load_modules", lambda: None)
        monkeypatch.setattr(localverity, "attach", self.attach)

    def attach(self, path: str, tree: str, size: int, root: str, tree_size: int, *, name: str) -> str:
        from layerboot.initrd.stage1.localverity import check_files

        check_files(path, tree, size, tree_size)
        self.calls.append((Path(path).read_bytes(), Path(tree).read_bytes(), root))
        return f"/dev/dm-{len(self.calls)}"


def test_verify_blocks_downloads_without_hashing_and_attaches_through_dm_verity(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    kernel = Attaches(monkeypatch)
    good = blob(4096 * 30, 1)
    wrong = bytes(len(good))          # what a broken server sends: the right size, other bytes
    layer = _with_tree(server, good, served=wrong)
    plain = server.add(blob(5000, 2))  # no tree: hashed whole as before
    paths = fetch_layers(server.url, "tok", (layer, plain), str(tmp_path), timeout=5, verify="blocks")
    assert paths == ["/dev/dm-1", str(tmp_path / plain.digest)]
    # Not hashed: the wrong bytes reached dm-verity, which fails their reads (the node's kernel: EIO).
    assert kernel.calls == [(wrong, server.blobs[layer.verity.tree], layer.verity.root)]
    assert sorted(os.listdir(tmp_path)) == sorted([layer.digest, layer.digest + ".verity", plain.digest])
    assert "layerboot: layerboot.verify=blocks: 1 layers downloaded without hashing and attached through dm-verity " \
           "(every block checked as it is read), 1 without a tree and 0 a mirror may serve hashed whole" \
           in capfd.readouterr().err
    # The whole mode (the default) hashes the same layer and refuses the wrong bytes.
    with pytest.raises(FetchError, match="failed verification"):
        fetch_layers(server.url, "tok", (layer,), str(tmp_path / "whole"), timeout=5)


def test_verify_blocks_checks_the_tree_and_hashes_mirrored_layers_whole(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layerboot.initrd.stage1.sources import Sources

    kernel = Attaches(monkeypatch)
    bad_tree = _with_tree(server, blob(4096 * 8, 3), tree=b"\0" * 4096)
    with pytest.raises(FetchError, match=f"layer {bad_tree.verity.tree[:12]} failed verification"):
        fetch_layers(server.url, "tok", (bad_tree,), str(tmp_path / "a"), timeout=5, verify="blocks", retries=0)
    assert os.listdir(tmp_path / "a") == [] and kernel.calls == []     # nothing left behind, nothing attached
    mirrored = _with_tree(server, blob(4096 * 8, 4))
    with socket_port() as dead:
        sources = Sources(server.url, (f"http://127.0.0.1:{dead}",))
        paths = fetch_layers(server.url, "tok", (mirrored,), str(tmp_path / "b"), timeout=5, verify="blocks",
                             sources=sources)
    assert paths == [str(tmp_path / "b" / mirrored.digest)] and kernel.calls == []   # hashed whole


def test_verify_blocks_without_dm_verity_hashes_whole_in_one_line(server: Server, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capfd: pytest.CaptureFixture) -> None:
    from layerboot.initrd.stage1 import localverity

    def absent() -> None:
        raise localverity.VerityUnavailable("no dm-verity in this kernel (modprobe: not found)")

    monkeypatch.setattr(localverity, "load_modules", absent)
    layer = _with_tree(server, blob(4096 * 4, 5))
    assert fetch_layers(server.url, "tok", (layer,), str(tmp_path), timeout=5, verify="blocks") == \
        [str(tmp_path / layer.digest)]
    assert capfd.readouterr().err.count("layerboot: layerboot.verify=blocks: no dm-verity in this kernel "
                                        "(modprobe: not found); hashing every layer whole") == 1


class socket_port:  # noqa: N801 - a context manager
    """A loopback port nobody listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        pass
