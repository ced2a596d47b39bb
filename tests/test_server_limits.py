"""Availability of the real layerbootd on loopback (issue 11, item 7): stalled readers and writers, half-sent
requests and greedy clients or nodes must not take the service from the others.

Clients are told apart by address: every 127.0.0.0/8 address is loopback on Linux, so a client binds
127.0.1.N to be another machine. The daemons get short timeouts so the tests stay fast.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.server.uploads import UploadRecords
from server_daemon import MAC, OTHER_MAC, Daemon, Reply, boot_profile, write_config

BIG = 24 << 20          # far more than the socket buffers of a client that does not read


@dataclass
class Site:
    daemon: Daemon
    digests: dict[str, str]
    other_digests: dict[str, str]
    token: str
    other_token: str
    big: str

    @property
    def admin(self) -> str:
        return (self.daemon.paths.state / "admin.token").read_text().strip()

    def in_progress(self) -> dict[str, int]:
        return fetch(self.daemon, "/status", source="127.0.9.9").json()["in_progress"]


@pytest.fixture
def site_factory(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[Callable[..., Site]]:
    digests = boot_profile(profiles, make_layer, tmp_path, "p1")
    other_digests = boot_profile(profiles, make_layer, tmp_path, "p2")
    big_file = tmp_path / "big-kernel"
    big_file.write_bytes(os.urandom(BIG))
    big = profiles.store.import_boot_file(big_file, kind="kernel").digest
    profiles.set_boot("p1", kernel=big)
    started: list[Daemon] = []

    def start(**server: Any) -> Site:
        config = write_config(tmp_path / f"layerboot{len(started)}.toml", profiles.paths, **server)
        daemon = Daemon(profiles.paths, config, tmp_path / f"layerbootd{len(started)}.log")
        registry = daemon.registry()
        _, token = registry.register(MAC, "p1", replace=True)
        _, other = registry.register(OTHER_MAC, "p2", replace=True)
        started.append(daemon.start())
        return Site(daemon, digests, other_digests, token, other, big)

    yield start
    for daemon in started:
        daemon.stop()
        assert "Traceback" not in daemon.log.read_text(), daemon.log.read_text()


# -- raw clients ---------------------------------------------------------------------------------------------
def fetch(daemon: Daemon, path: str, *, source: str = "127.0.0.1", token: str | None = None,
          method: str = "GET", body: bytes | None = None) -> Reply:
    """One request from the client address ``source``, asking for JSON."""
    return daemon.request(method, path, source=source, token=token, body=body, headers={"Accept": "application/json"})


def connect(daemon: Daemon, data: bytes = b"", *, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    """A raw connection from ``source`` that sends ``data`` and then nothing; with ``rcvbuf`` a small receive
    buffer, so a client that does not read stalls the server's sending at once."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", daemon.port))
    if data:
        sock.sendall(data)
    return sock


def head(method: str, path: str, token: str | None = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"Authorization: Bearer {token}"] if token else []
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout} s") from None
    finally:
        sock.close()
    return data, time.monotonic() - start


def answer(sock: socket.socket, ending: bytes, timeout: float) -> bytes:
    """What the server sends until ``ending`` (while the connection may stay open)."""
    sock.settimeout(timeout)
    data = b""
    while ending not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def stalled_upload(site: Site, records: UploadRecords) -> socket.socket:
    """An upload of MAC that sends its head and 1000 of its 1000000 bytes, then nothing."""
    sock = connect(site.daemon, head("PUT", f"/nodes/{MAC}/uploads/stall.tar.zst", site.token,
                                     Content_Length="1000000") + os.urandom(1000))
    wait_for(lambda: records.list(state="receiving"), "the upload to start")
    return sock


def other_upload(site: Site) -> Reply:
    return fetch(site.daemon, f"/nodes/{OTHER_MAC}/uploads/b.tar.zst", token=site.other_token, method="PUT",
                 body=os.urandom(5000))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- item 7 ------------------------------------------------------------------------------------------------
def test_64_stalled_downloads_do_not_hold_up_a_good_one(site_factory: Callable[..., Site]) -> None:
    site = site_factory(send_timeout=6)
    daemon = site.daemon
    stalled = [connect(daemon, head("GET", f"/objects/{site.big}", site.admin), source=f"127.0.1.{n + 1}",
                       rcvbuf=4096) for n in range(64)]
    wait_for(lambda: site.in_progress()["sending"] >= 64, "64 downloads in progress")
    started = time.monotonic()
    reply = fetch(daemon, f"/objects/{site.big}", token=site.token, source="127.0.2.1")
    elapsed = time.monotonic() - started
    assert reply.status == 200 and hashlib.sha256(reply.body).hexdigest() == site.big
    # the 64 were still connected and stalled all along: the good download did not wait for any of them
    assert site.in_progress()["sending"] == 64, elapsed
    print(f"good download of {BIG >> 20} MiB beside 64 stalled ones: {elapsed:.2f} s")
    # after server.send_timeout without progress, each stalled one is cut off
    wait_for(lambda: site.in_progress()["sending"] == 0, "the stalled downloads to be cut", timeout=30)
    for sock in stalled:     # reset by the server: whatever it had queued for them is dropped
        data, elapsed = until_closed(sock, 10)
        assert len(data) < BIG and elapsed < 1
    assert "took no data for 6 s (server.send_timeout)" in daemon.log.read_text()
    assert fetch(daemon, f"/objects/{site.big}", token=site.token).status == 200


def test_half_sent_and_trickled_requests_are_closed_after_the_header_timeout(
        site_factory: Callable[..., Site]) -> None:
    site = site_factory(header_timeout=1)
    daemon = site.daemon
    opened = time.monotonic()
    half = connect(daemon, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    silent = connect(daemon)
    for sock in (half, silent):
        data, _ = until_closed(sock, 10)
        assert data == b"" and 0.8 < time.monotonic() - opened < 5, time.monotonic() - opened
    # one byte every 0.1 s never completes the head: the timeout counts from the connection, not per byte
    slow = connect(daemon)
    started = time.monotonic()
    for byte in b"GET /status HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200:
        if select.select([slow], [], [], 0.1)[0]:
            break
        slow.send(bytes([byte]))
    data, _ = until_closed(slow, 10)
    assert data == b"" and time.monotonic() - started < 5
    # a keep-alive connection serves requests, then is closed when it idles past the timeout
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/status")
        response = conn.getresponse()
        assert response.status == 200 and b"layerbootd is running" in response.read()
    data, elapsed = until_closed(conn.sock, 10)
    assert data == b"" and 0.5 < elapsed < 5
    assert fetch(daemon, "/status").status == 200


def test_one_client_over_its_connection_limit_gets_429_while_another_is_served(
        site_factory: Callable[..., Site]) -> None:
    site = site_factory(max_connections_per_client=4)
    daemon = site.daemon
    wait_for(lambda: site.in_progress()["connections"] == 1, "the start-up probe's connection to be gone")
    idle = [connect(daemon, source="127.0.0.1") for _ in range(4)]
    wait_for(lambda: site.in_progress()["connections"] == 5, "4 idle connections (and this one)")
    refused = fetch(daemon, "/status", source="127.0.0.1")
    assert refused.status == 429 and refused.headers["retry-after"] == "5"
    assert refused.text.startswith("layerboot: error: 127.0.0.1 has 4 connections open already; try again")
    assert "server.max_connections_per_client" in refused.text
    assert fetch(daemon, "/status", source="127.0.0.2").status == 200
    assert fetch(daemon, f"/objects/{site.digests['base']}", token=site.token, source="127.0.0.2").status == 200
    idle.pop().close()
    wait_for(lambda: site.in_progress()["connections"] <= 4, "a connection slot to be given back")
    assert fetch(daemon, "/status", source="127.0.0.1").status == 200
    assert "refusing HTTP connections from 127.0.0.1" in daemon.log.read_text()
    for sock in idle:
        sock.close()


def test_a_node_over_its_download_limit_gets_429_while_another_node_is_served(
        site_factory: Callable[..., Site]) -> None:
    site = site_factory(max_downloads_per_node=2)
    daemon = site.daemon
    stalled = [connect(daemon, head("GET", f"/objects/{site.big}", site.token), source=f"127.0.1.{n + 1}",
                       rcvbuf=4096) for n in range(2)]
    wait_for(lambda: site.in_progress()["downloads"] == 2, "two downloads of the node")
    refused = fetch(daemon, f"/objects/{site.digests['base']}", token=site.token, source="127.0.1.3")
    assert refused.status == 429 and refused.headers["retry-after"] == "5"
    assert refused.json()["hint"] == "the limit is server.max_downloads_per_node"
    served = fetch(daemon, f"/objects/{site.other_digests['base']}", token=site.other_token, source="127.0.1.4")
    assert served.status == 200
    stalled.pop().close()
    wait_for(lambda: site.in_progress()["downloads"] == 1, "the closed download to give its slot back")
    reply = fetch(daemon, f"/objects/{site.digests['base']}", token=site.token, source="127.0.1.3")
    assert reply.status == 200 and hashlib.sha256(reply.body).hexdigest() == site.digests["base"]
    stalled[0].close()


def test_a_stalled_upload_is_cut_after_the_idle_timeout_and_the_queue_has_room_again(
        site_factory: Callable[..., Site]) -> None:
    site = site_factory(queue_size=1, read_timeout=2)
    daemon = site.daemon
    records = UploadRecords(daemon.registry().db, daemon.paths)
    stalled = stalled_upload(site, records)
    busy = other_upload(site)
    assert busy.status == 503 and "queue is full" in busy.json()["error"] and busy.headers["retry-after"]
    data = answer(stalled, b"(server.read_timeout)", 20)
    assert data.startswith(b"HTTP/1.1 408 ") and b"no byte for 2 s (server.read_timeout)" in data, data
    [upload] = records.list(mac=MAC)
    assert upload.state == "failed" and "stalled" in upload.message
    assert not list((daemon.paths.incoming / ".queue").iterdir())
    again = other_upload(site)
    assert again.status == 202, again.text
    # a boot report that stalls is cut the same way
    report = connect(daemon, head("POST", f"/nodes/{MAC}/events", site.token, Content_Length="100") + b'{"st')
    data = answer(report, b"(server.read_timeout)", 20)
    assert data.startswith(b"HTTP/1.1 408 ") and daemon.registry().events(MAC) == []


@pytest.mark.parametrize("limit", ["max_uploads_per_node", "max_queued_per_node"])
def test_one_node_cannot_take_the_upload_slots_of_the_others(site_factory: Callable[..., Site], limit: str) -> None:
    other = "max_queued_per_node" if limit == "max_uploads_per_node" else "max_uploads_per_node"
    site = site_factory(**{limit: 1, other: 0})
    daemon = site.daemon
    stalled = stalled_upload(site, UploadRecords(daemon.registry().db, daemon.paths))
    refused = fetch(daemon, f"/nodes/{MAC}/uploads/two.tar.zst", token=site.token, method="PUT",
                    body=os.urandom(5000))
    assert refused.status == 429 and refused.headers["retry-after"]
    assert refused.json()["hint"] == f"the limit is server.{limit}"
    served = other_upload(site)
    assert served.status == 202, served.text
    stalled.close()
