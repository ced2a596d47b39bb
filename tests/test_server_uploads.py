"""Uploads to the real layerbootd: HTTP PUT, the persistent bake queue, policies, kill -9 and restart."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.profile import Profiles
from layerboot.server.client import upload, upload_status
from layerboot.server.uploads import UploadRecords
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, layer_upload, write_config
from layerboot.run import run


class Setup:
    def __init__(self, profiles: Profiles, make_layer, tmp_path: Path, database: str = "") -> None:
        self.profiles = profiles
        self.database = database
        self.digests = boot_profile(profiles, make_layer, tmp_path, "p1")
        boot_profile(profiles, make_layer, tmp_path, "p2")
        self.tmp = tmp_path
        self.daemon: Daemon | None = None

    def start(self, **server: object) -> Daemon:
        if self.database:
            server["database"] = self.database
        config = write_config(self.tmp / "layerboot.toml", self.profiles.paths, **server)
        if self.daemon is None:
            self.daemon = Daemon(self.profiles.paths, config, self.tmp / "layerbootd.log", database=self.database)
            registry = self.daemon.registry()
            _, self.token = registry.register(MAC, "p1")
            _, self.other_token = registry.register(OTHER_MAC, "p2")
        return self.daemon.start()

    def records(self) -> UploadRecords:
        assert self.daemon is not None
        return UploadRecords(self.daemon.registry().db, self.profiles.paths)

    def put(self, name: str, data: bytes, *, token: str | None = None, mac: str = MAC):  # noqa: ANN201
        assert self.daemon is not None
        return self.daemon.request("PUT", f"/nodes/{mac}/uploads/{name}", body=data, token=token or self.token,
                                   headers={"Accept": "application/json"})

    def wait_state(self, upload_id: str, states: tuple[str, ...], timeout: float = 30) -> dict:
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = upload_status(upload_id, server=self.daemon.url, mac=MAC, secret=self.token)
            if status["state"] in states:
                return status
            time.sleep(0.05)
        raise AssertionError(f"upload {upload_id} never reached {states}: {status}\n{self.daemon.log.read_text()}")


def _setup(profiles: Profiles, make_layer, tmp_path: Path, database: str = "") -> Iterator[Setup]:
    s = Setup(profiles, make_layer, tmp_path, database)
    yield s
    if s.daemon is not None:
        s.daemon.stop()


@pytest.fixture
def setup(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[Setup]:
    yield from _setup(profiles, make_layer, tmp_path)


@pytest.fixture
def setup_each_db(profiles: Profiles, make_layer, tmp_path: Path, database_url: str) -> Iterator[Setup]:
    """The same, with layerbootd on each database backend (SQLite, PostgreSQL)."""
    yield from _setup(profiles, make_layer, tmp_path, database_url)


def top_layer_file(profiles: Profiles, name: str, profile: str = "p1") -> bytes:
    """One file's bytes from the top layer of a profile (read from the squashfs image, no mount)."""
    image = profiles.store.path(profiles.current(profile).layers[-1])
    return run(["rdsquashfs", "-c", name, image]).stdout


def test_upload_is_accepted_at_once_then_baked_and_appended(setup: Setup) -> None:
    daemon = setup.start(upload_policy="auto")
    before = setup.profiles.current("p1")
    data = layer_upload({"etc/hello": b"from the node\n"})
    path = setup.tmp / "change.tar.zst"
    path.write_bytes(data)
    reply = upload(path, server=daemon.url, mac=MAC.replace(":", "-"), secret=setup.token)
    assert reply["state"] == "received" and reply["size"] == len(data)
    status = setup.wait_state(reply["id"], ("baked", "failed"))
    assert status["state"] == "baked", status
    gen = setup.profiles.current("p1")
    assert gen.number == before.number + 1 and status["generation"] == gen.number
    assert gen.layers[:-1] == before.layers and gen.layers[-1] == status["layer"]
    assert top_layer_file(setup.profiles, "etc/hello") == b"from the node\n"
    layer = setup.profiles.store.get(status["layer"])
    assert layer.kind == "overlay" and layer.base == before.base and layer.parent == before.layers[-1]
    assert not list((daemon.paths.incoming / ".queue").iterdir())   # nothing left behind


def test_hold_policy_waits_for_approval(setup: Setup) -> None:
    daemon = setup.start()   # server.upload_policy defaults to hold
    before = setup.profiles.current("p1").number
    reply = setup.put("held.tar.zst", layer_upload({"etc/held": b"1"})).json()
    status = setup.wait_state(reply["id"], ("baked", "failed"))
    assert status["state"] == "baked" and status["generation"] is None and status["message"] == "held for approval"
    assert setup.profiles.current("p1").number == before
    from layerboot.tools.cli import main
    assert main(["--store", str(daemon.paths.root), "uploads", "approve", reply["id"]]) == 0
    assert setup.profiles.current("p1").layers[-1] == status["layer"]
    with pytest.raises(LayerbootError, match="only baked uploads waiting for approval"):
        setup.records().approve(reply["id"], setup.profiles)
    other = setup.put("nope.tar.zst", layer_upload({"etc/nope": b"2"})).json()
    assert setup.wait_state(other["id"], ("baked", "failed"))["message"] == "held for approval"
    rejected_layer = setup.records().get(other["id"]).layer
    assert rejected_layer and setup.profiles.store.objects.exists(rejected_layer)
    assert main(["--store", str(daemon.paths.root), "uploads", "reject", other["id"]]) == 0
    assert setup.records().get(other["id"]).state == "failed"
    # nothing else uses the rejected layer: its bytes do not stay in the store, counted against nobody
    assert not setup.profiles.store.objects.exists(rejected_layer)
    assert rejected_layer not in setup.profiles.store.digests()
    assert setup.profiles.current("p1").layers[-1] == status["layer"]


def test_concurrent_uploads_all_bake(setup: Setup) -> None:
    # six at once from one node: over the per-node defaults (tests/test_server_limits.py covers those)
    daemon = setup.start(upload_policy="auto", bake_workers=2, max_uploads_per_node=0, max_queued_per_node=0)
    replies: dict[int, dict] = {}

    def send(n: int) -> None:
        replies[n] = setup.put(f"c{n}.tar.zst", layer_upload({f"etc/c{n}": os.urandom(200_000)})).json()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(replies) == list(range(6)) and all("id" in r for r in replies.values()), replies
    layers = {setup.wait_state(r["id"], ("baked", "failed"))["layer"] for r in replies.values()}
    assert len(layers) == 6 and None not in layers
    gen = setup.profiles.current("p1")
    assert layers <= set(gen.layers)
    assert daemon.get("/status", headers={"Accept": "application/json"}).json()["uploads"]["baked"] == 6


def test_upload_auth_names_and_quota(setup: Setup) -> None:
    daemon = setup.start(upload_policy="auto")
    data = layer_upload({"etc/x": b"x"})
    assert setup.put("a.tar.zst", data, token="0" * 48).status == 401
    other = setup.put("a.tar.zst", data, token=setup.other_token)
    assert other.status == 403 and "another node" in other.json()["error"]
    # the boot token (on the kernel command line, readable by every user of the node) cannot upload
    read_only = setup.put("a.tar.zst", data, token=daemon.boot_token())
    assert read_only.status == 403 and "boot tokens are read-only: uploading needs the node secret" in \
        read_only.json()["error"] and "node.secret" in read_only.json()["hint"]
    assert setup.records().list() == []
    for name in ("..%2F..%2Fkeys%2Fsigning.key.tar.zst", ".hidden.tar.zst", "a.tar", "a%00b.tar.zst",
                 "x" * 200 + ".tar.zst"):
        reply = setup.put(name, data)
        assert reply.status in (400, 404), name
    assert not list(daemon.paths.keys.glob("*.tar.zst")) and not (daemon.paths.root / "keys.tar.zst").exists()


def test_oversized_uploads_are_refused(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    s = Setup(profiles, make_layer, tmp_path)
    config = write_config(tmp_path / "layerboot.toml", profiles.paths)
    config.write_text(config.read_text() + "[bake]\nmax_bytes = 100000\n")
    s.daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    _, s.token = s.daemon.registry().register(MAC, "p1")
    s.daemon.start()
    try:
        big = os.urandom(150_000)
        declared = s.put("big.tar.zst", big)
        assert declared.status == 413 and "quota" in declared.json()["error"]
        conn = http.client.HTTPConnection("127.0.0.1", s.daemon.port, timeout=10)
        conn.request("PUT", f"/nodes/{MAC}/uploads/chunked.tar.zst", body=iter([big[:60_000], big[60_000:]]),
                     headers={"Authorization": f"Bearer {s.token}", "Accept": "application/json"},
                     encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        conn.close()
        # the stdlib client reports the server's answer even when it stops reading a large body early
        huge = tmp_path / "huge.tar.zst"
        huge.write_bytes(os.urandom(8_000_000))
        with pytest.raises(LayerbootError, match="413 .*quota"):
            upload(huge, server=s.daemon.url, mac=MAC, secret=s.token)
        assert not [p for p in (profiles.paths.incoming / ".queue").iterdir()]
        assert {u.state for u in s.records().list()} == {"failed"}
    finally:
        s.daemon.stop()


def test_hostile_upload_fails_with_a_reason_and_changes_nothing(setup: Setup) -> None:
    setup.start(upload_policy="auto")
    layers_before = set(setup.profiles.store.digests())
    reply = setup.put("bad.tar.zst", b"this is not zstd at all").json()
    status = setup.wait_state(reply["id"], ("baked", "failed"))
    assert status["state"] == "failed" and "not zstd-compressed" in status["message"]
    evil = layer_upload({"../escape": b"x"})
    status = setup.wait_state(setup.put("evil.tar.zst", evil).json()["id"], ("baked", "failed"))
    assert status["state"] == "failed" and "upload rejected" in status["message"]
    assert set(setup.profiles.store.digests()) == layers_before


def _start_partial_upload(daemon: Daemon, token: str, total: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall((f"PUT /nodes/{MAC}/uploads/cut.tar.zst HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode() + sent)
    return sock


def test_kill_9_during_upload_then_restart(setup: Setup) -> None:
    daemon = setup.start(upload_policy="auto")
    data = layer_upload({"etc/big": os.urandom(2_000_000)})
    sock = _start_partial_upload(daemon, setup.token, len(data), data[: len(data) // 2])
    deadline = time.monotonic() + 10
    while not list((daemon.paths.incoming / ".queue").glob("*.part")):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    daemon.kill9()
    sock.close()
    setup.start(upload_policy="auto")
    [cut] = setup.records().list()
    assert cut.state == "failed" and "interrupted while receiving" in cut.message
    assert not list((daemon.paths.incoming / ".queue").iterdir())
    # the client retries and this time it goes through
    reply = setup.put("cut.tar.zst", data).json()
    assert setup.wait_state(reply["id"], ("baked", "failed"))["state"] == "baked"


def test_kill_9_during_bake_then_restart_finishes_the_bake(setup_each_db: Setup) -> None:
    setup = setup_each_db
    daemon = setup.start(upload_policy="auto")
    layers_before = set(setup.profiles.store.digests())
    generation_before = setup.profiles.current("p1").number
    data = layer_upload({"etc/a": os.urandom(48_000_000), "etc/b": b"small\n"})
    reply = setup.put("slow.tar.zst", data).json()
    setup.wait_state(reply["id"], ("baking",))
    started = time.monotonic()   # the bake runs in a worker thread: HTTP still answers at once
    assert daemon.get("/status", headers={"Accept": "application/json"}).json()["uploads"]["baking"] == 1
    assert daemon.get(f"/nodes/{MAC}/manifest", token=setup.token).status == 200
    assert time.monotonic() - started < 0.5
    daemon.kill9()
    assert set(setup.profiles.store.digests()) == layers_before   # no half layer
    assert setup.records().get(reply["id"]).state == "baking"
    assert [p.name[:5] for p in setup.profiles.paths.tmp.iterdir()] == ["bake."]   # the killed bake's scratch
    setup.start(upload_policy="auto")
    status = setup.wait_state(reply["id"], ("baked", "failed"), timeout=60)
    assert status["state"] == "baked", status
    assert "removed scratch tmp/bake." in daemon.log.read_text()   # at once, not an hour later
    assert not any(setup.profiles.paths.tmp.iterdir())
    new = set(setup.profiles.store.digests()) - layers_before
    assert new == {status["layer"]}
    assert setup.profiles.current("p1").number == generation_before + 1
    assert top_layer_file(setup.profiles, "etc/b") == b"small\n"
    assert setup.profiles.store.fsck() == []


def test_sigterm_during_bake_stops_promptly_and_the_bake_is_redone(setup: Setup) -> None:
    daemon = setup.start(upload_policy="auto")
    reply = setup.put("term.tar.zst", layer_upload({"etc/a": os.urandom(48_000_000)})).json()
    setup.wait_state(reply["id"], ("baking",))
    assert daemon.proc is not None
    started = time.monotonic()
    assert daemon.proc.terminate(timeout=20) == 0
    assert time.monotonic() - started < 8
    daemon.proc = None
    setup.start(upload_policy="auto")
    assert setup.wait_state(reply["id"], ("baked", "failed"), timeout=60)["state"] == "baked"


def _child(pid: int, name: str, timeout: float = 20) -> int:
    """The PID of the daemon's child process called ``name`` (zstd, tar2sqfs), waiting for it to appear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if comm == name and int(fields[1]) == pid:
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no {name} child of {pid}")


def test_a_tool_killed_by_a_signal_keeps_the_upload_queued_and_it_is_retried(setup: Setup) -> None:
    daemon = setup.start(upload_policy="auto", retry_initial=1, retry_max=1)
    assert daemon.proc is not None
    reply = setup.put("killed.tar.zst", layer_upload({"etc/a": os.urandom(48_000_000), "etc/b": b"b\n"})).json()
    errors = []
    for tool in ("zstd", "tar2sqfs"):   # the OOM killer or an admin: nothing to do with the upload
        os.kill(_child(daemon.proc.pid, tool), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (upload := setup.records().get(reply["id"])).state != "retry" or len(errors) == upload.attempts:
            assert time.monotonic() < deadline and upload.state not in ("failed", "baked"), upload
            time.sleep(0.02)
        errors.append(upload.last_error)
    assert errors == ["command zstd was killed by signal 9", "command tar2sqfs was killed by signal 9"], errors
    status = setup.wait_state(reply["id"], ("baked", "failed"), timeout=60)
    assert status["state"] == "baked" and status["attempts"] == 3, status
    assert top_layer_file(setup.profiles, "etc/b") == b"b\n"
