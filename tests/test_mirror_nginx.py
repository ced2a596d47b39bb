"""'layerboot mirror nginx-config' run by the real nginx in front of the real layerbootd on loopback: objects are
fetched from the origin once (per slice, however many ask at once) and then served from the cache, ranges
work, credentials are passed on and never cached or logged, nothing but /objects/ is served, and stage1
fetches through the mirror and falls back to the origin when it dies. The generated files pass nginx -t."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.initrd.stage1.fetch import fetch_layers
from layerboot.initrd.stage1.sources import Sources
from layerboot.initrd.stage1.verify import Layer
from layerboot.overlays.profile import Profiles
from layerboot.ports import free_port, wait_listening
from layerboot.run import Process, require_tool, run
from layerboot.tools.cli import main
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, write_config

pytestmark = pytest.mark.root   # nginx runs its workers as root here (the test's files are root's)

SLICE = 1 << 20


class Origin:
    def __init__(self, profiles: Profiles, make_layer, tmp_path: Path) -> None:
        self.profiles, self.tmp = profiles, tmp_path
        boot_profile(profiles, make_layer, tmp_path, "p1")
        boot_profile(profiles, make_layer, tmp_path, "p2")
        self.blobs: dict[str, bytes] = {}
        kernel = self.big("kernel", 5 * SLICE + 12345)
        initrd = self.big("initrd", 4 * SLICE + 7)
        profiles.set_boot("p1", kernel=kernel, initrd=initrd)
        self.kernel, self.initrd = kernel, initrd
        self.daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                             tmp_path / "layerbootd.log").start()
        registry = self.daemon.registry()
        registry.register(MAC, "p1")
        registry.register(OTHER_MAC, "p2")
        self.token = self.daemon.boot_token(MAC)
        self.other_token = self.daemon.boot_token(OTHER_MAC)

    def big(self, kind: str, size: int) -> str:
        path = self.tmp / f"big-{kind}"
        data = os.urandom(size)
        path.write_bytes(data)
        digest = self.profiles.store.import_boot_file(path, kind=kind).digest
        self.blobs[digest] = data
        return digest

    def served(self) -> float:
        text = self.daemon.get("/metrics").text
        return float(re.search(r"^layerboot_served_bytes_total (\S+)$", text, re.M).group(1))


class Mirror:
    def __init__(self, origin: Origin, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path / "mirror"
        self.conf = tmp_path / "mirror.conf"
        assert main(["mirror", "nginx-config", "--origin", origin.daemon.url, "--listen", f"127.0.0.1:{self.port}",
                     "--cache-dir", str(self.dir / "cache"), "--slice", "1m", "--full", "--user", "root",
                     "--run-dir", str(self.dir), "--foreground", "-o", str(self.conf)]) == 0
        self.dir.mkdir()
        self.process = Process([require_tool("nginx", package="nginx-light"), "-c", self.conf, "-p", self.dir])
        wait_listening(self.port, self.process, "the mirror's nginx", log=self.dir / "error.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, origin: Origin, path: str, **kwargs) -> object:  # noqa: ANN003 - Daemon.request's
        return Daemon(origin.daemon.paths, origin.daemon.config, origin.daemon.log, port=self.port).request(
            kwargs.pop("method", "GET"), path, **kwargs)


@pytest.fixture
def origin(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[Origin]:
    o = Origin(profiles, make_layer, tmp_path)
    yield o
    o.daemon.stop()


@pytest.fixture
def mirror(origin: Origin, tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(origin, tmp_path)
    yield m
    m.process.terminate()


def test_objects_come_from_the_origin_once_then_from_the_cache(origin: Origin, mirror: Mirror) -> None:
    before = origin.served()
    first = mirror.get(origin, f"/objects/{origin.kernel}", token=origin.token)
    assert first.status == 200 and first.body == origin.blobs[origin.kernel]
    assert first.headers["x-layerboot-mirror"] == "MISS"
    assert origin.served() - before == len(first.body)
    again = mirror.get(origin, f"/objects/{origin.kernel}", token=origin.token)
    assert again.body == first.body and again.headers["x-layerboot-mirror"] == "HIT"
    part = mirror.get(origin, f"/objects/{origin.kernel}", token=origin.token,
                      headers={"Range": "bytes=1500000-1500099"})
    assert part.status == 206 and part.body == origin.blobs[origin.kernel][1500000:1500100]
    assert origin.served() - before == len(first.body)          # the cache answered both
    # A storm on a fresh object: 12 clients at once, each slice fetched from the origin once.
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(mirror.get(origin, f"/objects/{origin.initrd}",
                                                                        token=origin.token).body))
               for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert bodies == [origin.blobs[origin.initrd]] * 12
    assert origin.served() - before == len(first.body) + len(origin.blobs[origin.initrd])


def test_credentials_pass_through_are_never_cached_or_logged_and_only_objects_are_served(origin: Origin,
                                                                                          mirror: Mirror) -> None:
    kernel = f"/objects/{origin.kernel}"
    assert mirror.get(origin, kernel).status == 401                        # the origin's answer, passed on
    assert mirror.get(origin, kernel, token=origin.other_token).status == 403   # p2's node, p1's object
    ok = mirror.get(origin, kernel, token=origin.token)
    assert ok.status == 200 and ok.headers["x-layerboot-mirror"] == "MISS"   # the refusals were not cached
    for path, status in ((f"/nodes/{MAC}/manifest", 404), (f"/boot/{MAC}.ipxe", 404), ("/status", 404),
                         (f"/objects/{origin.kernel}/x", 404), ("/objects/ABC", 404)):
        reply = mirror.get(origin, path, token=origin.token)
        assert reply.status == status and "this mirror serves /objects/<sha256> only" in reply.text, path
    assert mirror.get(origin, kernel, method="PUT", body=b"x", token=origin.token).status == 403
    assert mirror.get(origin, "/layerboot-mirror").text == f"layerboot mirror of {origin.daemon.url}\n"
    mirror.get(origin, f"{kernel}?token={origin.token}")
    log = (mirror.dir / "access.log").read_text()
    assert origin.kernel in log and origin.token not in log and "cache=HIT" in log


def test_stage1_fetches_through_the_mirror_and_falls_back_when_it_dies(origin: Origin, mirror: Mirror,
                                                                       tmp_path: Path) -> None:
    gen = origin.profiles.current("p1")
    layers = tuple(Layer(d, origin.profiles.store.get(d).size, f"objects/{d}")
                   for d in (*gen.chain, origin.kernel, origin.initrd))
    sources = Sources(origin.daemon.url, (mirror.url,), "listed")
    paths = fetch_layers(origin.daemon.url, origin.token, layers, str(tmp_path / "one"), timeout=10,
                         sources=sources)
    assert [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths] == [x.digest for x in layers]
    assert sources.bytes == {mirror.url: sum(x.size for x in layers)} and not sources.down
    mirror.process.terminate()
    lines: list[str] = []
    sources = Sources(origin.daemon.url, (mirror.url,), "listed", say=lines.append)
    fetch_layers(origin.daemon.url, origin.token, layers, str(tmp_path / "two"), timeout=10, sources=sources)
    assert sources.bytes == {origin.daemon.url: sum(x.size for x in layers)}
    assert list(sources.down) == [mirror.url] and len(lines) == 1 and "Connection refused" in lines[0]


def test_generated_files_pass_nginx_t_and_bad_options_are_one_line(tmp_path: Path, capsys) -> None:
    nginx = require_tool("nginx", package="nginx-light")
    snippet = tmp_path / "layerboot-mirror.conf"
    assert main(["mirror", "nginx-config", "--origin", "http://10.0.0.1:8080", "--allow", "10.1.0.0/16",
                 "--allow", "fd00::/64", "--cache-dir", str(tmp_path / "cache"), "-o", str(snippet)]) == 0
    text = snippet.read_text()
    assert "allow 10.1.0.0/16;" in text and "allow fd00::/64;" in text and "deny all;" in text
    wrapper = tmp_path / "nginx.conf"
    wrapper.write_text(f"pid {tmp_path}/n.pid;\nerror_log {tmp_path}/e.log;\nevents {{}}\n"
                       f"http {{\n    include {snippet};\n}}\n")
    text = text.replace("/var/log/nginx/", f"{tmp_path}/")
    snippet.write_text(text)
    run([nginx, "-t", "-c", wrapper, "-p", tmp_path])
    full = tmp_path / "full.conf"
    assert main(["mirror", "nginx-config", "--origin", "http://[fd00::1]:8080", "--full", "--run-dir",
                 str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache2"), "-o", str(full)]) == 0
    (tmp_path / "run").mkdir()
    run([nginx, "-t", "-c", full, "-p", tmp_path])
    capsys.readouterr()
    for args, words in ((["--origin", "https://x:1"], "must be an http:// URL"),
                        (["--origin", "http://x:1/sub"], "without a path"),
                        (["--origin", "http://x", "--listen", "80; include /etc/passwd"], "--listen"),
                        (["--origin", "http://x", "--allow", "10.0.0.0/33"], "--allow '10.0.0.0/33'"),
                        (["--origin", "http://x", "--cache-dir", "relative"], "--cache-dir"),
                        (["--origin", "http://x", "--slice", "8 m"], "--slice"),
                        ([], "which server should the mirror fetch from?")):
        assert main(["--store", str(tmp_path / "none"), "mirror", "nginx-config", *args]) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("layerboot: error: ") and words in err[0], err
        assert len(err) <= 2
