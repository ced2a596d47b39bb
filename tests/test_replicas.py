"""Two layerbootd replicas on one store and one real PostgreSQL, behind nginx as the load balancer: either
serves any node, one killed (SIGKILL) mid-bake leaves the upload to the other, nothing is baked twice or
lost, a replica starting leaves the others' work alone, one replica at a time runs the monitor, and the
store lock keeps replicas and a lone daemon apart."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.ports import free_port, wait_listening
from layerboot.run import Process, require_tool, run
from layerboot.server.uploads import UploadRecords
from pgserver import PostgresServer
from server_daemon import MAC, Daemon, boot_profile
from test_server_uploads import layer_upload

pytestmark = pytest.mark.root   # nginx runs its workers as root here

LEASE = 2          # server.replica_lease: short, so a take-over happens within seconds

LB_CONF = """\
worker_processes 1;
daemon off;
user root;
pid {work}/lb.pid;
error_log {work}/lb-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/lb-tmp;
    proxy_temp_path {work}/lb-tmp;
    fastcgi_temp_path {work}/lb-tmp;
    uwsgi_temp_path {work}/lb-tmp;
    scgi_temp_path {work}/lb-tmp;
    upstream replicas {{
        server 127.0.0.1:{a} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=30s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        location / {{
            proxy_pass http://replicas;
            proxy_set_header Host $host:$server_port;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class Cluster:
    def __init__(self, profiles: Profiles, make_layer, tmp_path: Path, url: str) -> None:
        self.profiles, self.tmp, self.url = profiles, tmp_path, url
        self.paths = profiles.paths
        boot_profile(profiles, make_layer, tmp_path, "p1")
        self.config = self.write_config("replicas.toml", replicas=True, database=url)
        self.daemons: list[Daemon] = []
        self.lb: Process | None = None
        self.lb_port = 0

    def write_config(self, name: str, **server: object) -> Path:
        lines = [f'[store]\nroot = "{self.paths.root}"\n', "[server]", 'upload_policy = "auto"',
                 f"replica_lease = {LEASE}", "retry_initial = 1", "bake_workers = 1"]
        for key, value in server.items():
            lines.append(f"{key} = " + ("true" if value is True else "false" if value is False else f'"{value}"'))
        lines.append("\n[monitor]\ninterval = 1")
        path = self.tmp / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def replica(self, name: str) -> Daemon:
        daemon = Daemon(self.paths, self.config, self.tmp / f"{name}.log", database=self.url).start()
        self.daemons.append(daemon)
        return daemon

    def balance(self, a: Daemon, b: Daemon) -> str:
        (self.tmp / "lb-tmp").mkdir(exist_ok=True)
        self.lb_port = free_port()
        conf = self.tmp / "lb.conf"
        conf.write_text(LB_CONF.format(work=self.tmp, a=a.port, b=b.port, port=self.lb_port))
        self.lb = Process([require_tool("nginx", package="nginx-light"), "-c", conf, "-p", self.tmp],
                          stdout=open(self.tmp / "lb.log", "wb"), stderr=open(self.tmp / "lb.log", "ab"))
        wait_listening(self.lb_port, self.lb, "the nginx load balancer", log=self.tmp / "lb-error.log")
        return f"http://127.0.0.1:{self.lb_port}"

    def via_lb(self) -> Daemon:
        """A Daemon handle whose requests go to the load balancer."""
        return Daemon(self.paths, self.config, self.tmp / "unused.log", port=self.lb_port, database=self.url)

    def records(self) -> UploadRecords:
        return UploadRecords(self.daemons[0].registry().db, self.paths)

    def wait_state(self, upload_id: str, states: tuple[str, ...], timeout: float = 90) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            upload = self.records().get(upload_id)
            if upload.state in states:
                return upload
            time.sleep(0.05)
        raise AssertionError(f"upload {upload_id} never reached {states}: {upload}\n"
                             + "\n".join(d.log.read_text()[-3000:] for d in self.daemons))

    def stop(self) -> None:
        if self.lb is not None:
            self.lb.terminate()
        for daemon in self.daemons:
            daemon.stop()


@pytest.fixture
def cluster(profiles: Profiles, make_layer, tmp_path: Path, postgres: PostgresServer) -> Iterator[Cluster]:
    url = postgres.new_database()
    c = Cluster(profiles, make_layer, tmp_path, url)
    yield c
    c.stop()
    postgres.drop_database(url)


def owner_pid(owner: str) -> int:
    return int(owner.split(":")[-2])


def test_two_replicas_one_killed_mid_bake_the_other_finishes_nothing_twice_nothing_lost(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    cluster.balance(a, b)
    lb = cluster.via_lb()
    _, secret = a.registry().register(MAC, "p1")
    # One boot token, minted through the balancer by whichever replica, opens the manifest on both.
    token = lb.boot_token()
    assert a.get(f"/nodes/{MAC}/manifest", token=token).status == 200
    assert b.get(f"/nodes/{MAC}/manifest", token=token).status == 200
    status = a.get("/status", headers={"Accept": "application/json"}).json()
    assert status["replica"]["id"].split(":")[1] == str(a.proc.pid) and len(status["replica"]["others"]) == 1

    store = cluster.profiles.store
    layers_before, gen_before = set(store.digests()), cluster.profiles.current("p1").number
    data = layer_upload({"etc/big": os.urandom(48_000_000), "etc/one": b"one\n"})
    first = lb.request("PUT", f"/nodes/{MAC}/uploads/one.tar.zst", body=data, token=secret).json()
    second = lb.request("PUT", f"/nodes/{MAC}/uploads/two.tar.zst", token=secret,
                        body=layer_upload({"etc/two": b"two\n"})).json()
    baking = cluster.wait_state(first["id"], ("baking",))
    victim = a if owner_pid(baking.owner) == a.proc.pid else b
    survivor = b if victim is a else a
    assert baking.attempts == 1
    assert victim.proc is not None
    victim.kill9()
    killed = time.monotonic()

    done = cluster.wait_state(first["id"], ("baked", "failed"))
    took = time.monotonic() - killed
    assert done.state == "baked", done
    assert owner_pid(done.owner) == survivor.proc.pid and done.attempts == 2     # the survivor baked it again
    assert took < LEASE + 15, f"the take-over took {took:.1f} s"
    log = survivor.log.read_text()
    assert f"upload {first['id']}: {baking.owner} stopped renewing its claim" in log
    assert cluster.wait_state(second["id"], ("baked", "failed")).state == "baked"   # nothing lost
    # Each upload baked into the profile once: two new layers, two new generations, no upload file left.
    rows = {u.id: u for u in cluster.records().list(mac=MAC)}
    new_layers = set(store.digests()) - layers_before
    assert new_layers == {rows[first["id"]].layer, rows[second["id"]].layer}
    assert cluster.profiles.current("p1").number == gen_before + 2
    assert [d for d in cluster.profiles.current("p1").layers if d in new_layers] == \
        sorted(new_layers, key=cluster.profiles.current("p1").layers.index)
    assert {rows[i].generation for i in (first["id"], second["id"])} == {gen_before + 1, gen_before + 2}
    assert not any((cluster.paths.incoming / ".queue").iterdir())
    # The balancer keeps serving through the survivor.
    assert lb.get(f"/nodes/{MAC}/manifest", token=token).status == 200


def test_a_replica_starting_leaves_the_others_bake_alone(cluster: Cluster) -> None:
    a = cluster.replica("a")
    _, secret = a.registry().register(MAC, "p1")
    reply = a.request("PUT", f"/nodes/{MAC}/uploads/slow.tar.zst", token=secret,
                      body=layer_upload({"etc/big": os.urandom(48_000_000)})).json()
    baking = cluster.wait_state(reply["id"], ("baking",))
    scratch = [p for p in cluster.paths.tmp.iterdir() if p.name.startswith("bake.")]
    b = cluster.replica("b")           # its start-up clean-up and queue recovery run now
    row = cluster.records().get(reply["id"])
    if row.state == "baking":          # (a fast machine may have finished already)
        assert row.owner == baking.owner and row.attempts == 1
        assert all(p.exists() for p in scratch), "b removed a's bake scratch"
    done = cluster.wait_state(reply["id"], ("baked", "failed"))
    assert done.state == "baked" and done.attempts == 1 and done.owner == baking.owner
    assert "re-queued" not in b.log.read_text() and "removed scratch" not in b.log.read_text()


def test_one_replica_runs_the_monitor_and_the_other_takes_over(cluster: Cluster) -> None:
    from layerboot.server.replica.lease import Leases

    a, b = cluster.replica("a"), cluster.replica("b")
    leases = Leases(a.registry().db)
    deadline = time.monotonic() + 20
    while (holder := leases.holder("monitor")) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holder is not None
    runner, standby = (a, b) if owner_pid(holder.owner) == a.proc.pid else (b, a)
    time.sleep(3)                      # a few monitor intervals: the holder keeps it, the other stands by
    assert leases.holder("monitor").owner == holder.owner
    assert "runs the monitor now" in runner.log.read_text()
    assert "this one stands by" in standby.log.read_text()
    runner.kill9()
    deadline = time.monotonic() + 3 * LEASE + 10
    while owner_pid(leases.holder("monitor").owner) != standby.proc.pid and time.monotonic() < deadline:
        time.sleep(0.2)
    assert owner_pid(leases.holder("monitor").owner) == standby.proc.pid
    assert "runs the monitor now" in standby.log.read_text()


def layerbootd(config: Path, *extra: str) -> list[str]:
    return run([sys.executable, "-m", "layerboot.server.main", "--config", str(config), "--listen", "127.0.0.1",
                "--port", str(free_port()), *extra], check=False, timeout=60).stderr.decode().splitlines()


def test_replicas_and_a_lone_daemon_keep_apart_in_one_line(cluster: Cluster) -> None:
    sqlite = cluster.write_config("sqlite.toml", replicas=True)
    lines = layerbootd(sqlite)
    assert lines[0].startswith("layerbootd: error: server.replicas = true needs a PostgreSQL server.database")
    assert len(lines) == 2 and lines[1].startswith("layerbootd: hint:")
    a = cluster.replica("a")
    alone = cluster.write_config("alone.toml", database=cluster.url)
    lines = layerbootd(alone)
    assert lines[0] == (f"layerbootd: error: layerbootd replicas (server.replicas = true) are using the store at "
                        f"{cluster.paths.root} (they hold {cluster.paths.daemon_lock})"), lines
    result = run([sys.executable, "-m", "layerboot", "--config", str(cluster.config), "store", "fsck"],
                 check=False, timeout=120)
    assert "upload queue not checked: layerbootd replicas" in result.text + result.stderr.decode()
    a.stop()
    cluster.daemons.remove(a)
    lone = Daemon(cluster.paths, alone, cluster.tmp / "lone.log", database=cluster.url).start(timeout=60)
    try:
        lines = layerbootd(cluster.config)
        assert lines[0] == (f"layerbootd: error: layerbootd (PID {lone.proc.pid}) is using the store at "
                            f"{cluster.paths.root} alone (it holds {cluster.paths.daemon_lock})"), lines
    finally:
        lone.stop()
