"""Per-node quota against the real layerbootd: every upload a node keeps on the server counts (queued, failed
and kept for inspection, held for approval, in its SFTP area); beyond it new uploads get 507, before a byte
is stored, over HTTP and SFTP alike."""

from __future__ import annotations

import asyncio
import http.client
import os
import time
from pathlib import Path

import asyncssh
import pytest

from layerboot.overlays.profile import Profiles
from layerboot.ports import free_port
from layerboot.server.sshkeys import normalize
from layerboot.server.uploads import UploadRecords
from layerboot.tools.cli import main
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, write_config
from test_server_uploads import layer_upload


def start(profiles: Profiles, make_layer, tmp_path: Path, **server: object) -> tuple[Daemon, str, str]:
    boot_profile(profiles, make_layer, tmp_path)
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, **server)
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log", ssh_port=free_port())
    registry = daemon.registry()
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "node.key").write_bytes(key.export_private_key())
    _, token = registry.register(MAC, "p1", ssh_keys=(normalize(key),))
    _, other = registry.register(OTHER_MAC, "p1")
    return daemon.start(), token, other


def put(daemon: Daemon, token: str, name: str, data: bytes, mac: str = MAC):  # noqa: ANN201
    return daemon.request("PUT", f"/nodes/{mac}/uploads/{name}", body=data, token=token,
                          headers={"Accept": "application/json"})


def wait(daemon: Daemon, upload_id: str, states: tuple[str, ...]):  # noqa: ANN201
    records = UploadRecords(daemon.registry().db, daemon.paths)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        upload = records.get(upload_id)
        if upload.state in states:
            return upload
        time.sleep(0.05)
    raise AssertionError(f"{records.get(upload_id)}\n{daemon.log.read_text()}")


async def sftp_put(daemon: Daemon, key_file: Path, data: bytes) -> None:
    async with asyncssh.connect("127.0.0.1", daemon.ssh_port, username=MAC.replace(":", "-"),
                                client_keys=[str(key_file)], known_hosts=None, agent_path=None) as conn:
        async with conn.start_sftp_client() as sftp:
            async with sftp.open("more.tar.zst", "wb") as handle:
                await handle.write(data)


def test_held_uploads_count_until_approved_over_http_and_sftp(profiles: Profiles, make_layer, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    daemon, token, other = start(profiles, make_layer, tmp_path, node_max_uploads=2)   # policy: hold
    try:
        held = [put(daemon, token, f"h{n}.tar.zst", layer_upload({f"etc/h{n}": b"x" * 1000})).json()["id"]
                for n in range(2)]
        for upload_id in held:
            assert wait(daemon, upload_id, ("baked", "failed")).held
        refused = put(daemon, token, "third.tar.zst", layer_upload({"etc/third": b"3"}))
        assert refused.status == 507, refused.text
        error = refused.json()["error"]
        assert f"node {MAC} already keeps 2 upload(s)" in error and "2 held for approval" in error
        assert "server.node_max_uploads" in error and "approve or reject" in refused.json()["hint"]
        with pytest.raises(asyncssh.SFTPFailure, match="already keeps 2 upload"):
            asyncio.run(sftp_put(daemon, tmp_path / "node.key", layer_upload({"etc/s": b"s"})))
        assert put(daemon, other, "o.tar.zst", layer_upload({"etc/o": b"o"}), mac=OTHER_MAC).status == 202
        assert len(UploadRecords(daemon.registry().db, daemon.paths).list(mac=MAC)) == 2   # nothing stored

        assert main(["--config", str(daemon.config), "uploads", "usage"]) == 0
        usage = capsys.readouterr().out.splitlines()
        row = next(line.split() for line in usage if line.startswith(MAC))
        assert usage[0].split()[:6] == ["NODE", "QUEUED", "FAILED", "HELD", "SFTP", "UPLOADS"]
        assert row[3] == "2" and row[5] == "2" and row[6] == "2"

        assert main(["--store", str(daemon.paths.root), "uploads", "approve", held[0]]) == 0
        assert put(daemon, token, "third.tar.zst", layer_upload({"etc/third": b"3"})).status == 202
    finally:
        daemon.stop()


def test_a_refused_upload_is_kept_for_inspection_counts_then_expires(profiles: Profiles, make_layer,
                                                                    tmp_path: Path) -> None:
    daemon, token, _ = start(profiles, make_layer, tmp_path, node_max_uploads=1, failed_upload_keep=2)
    try:
        bad = put(daemon, token, "bad.tar.zst", b"not zstd at all").json()["id"]
        failed = wait(daemon, bad, ("failed",))
        assert "not zstd-compressed" in failed.message and Path(failed.path).read_bytes() == b"not zstd at all"
        refused = put(daemon, token, "next.tar.zst", layer_upload({"etc/n": b"n"}))
        assert refused.status == 507 and "1 failed (kept for inspection)" in refused.json()["error"]
        deadline = time.monotonic() + 15   # kept 2 s, then removed by the queue's sweep (every 5 s)
        while Path(failed.path).exists():
            assert time.monotonic() < deadline, daemon.log.read_text()
            time.sleep(0.1)
        assert put(daemon, token, "next.tar.zst", layer_upload({"etc/n": b"n"})).status == 202
        assert "removed the file of the refused upload" in daemon.log.read_text()
    finally:
        daemon.stop()


def test_byte_quota_refuses_before_reading_and_cuts_off_a_chunked_upload(profiles: Profiles, make_layer,
                                                                        tmp_path: Path) -> None:
    daemon, token, _ = start(profiles, make_layer, tmp_path, node_max_bytes=1_000_000)
    try:
        big = os.urandom(1_500_000)
        declared = put(daemon, token, "big.tar.zst", big)
        assert declared.status == 507 and "over the 1000000 bytes left in the quota" in declared.json()["error"]
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        conn.request("PUT", f"/nodes/{MAC}/uploads/chunked.tar.zst", body=iter([big[:600_000], big[600_000:]]),
                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                     encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 507, response.read()
        conn.close()
        queue = daemon.paths.incoming / ".queue"
        assert not list(queue.iterdir())
        [cut] = UploadRecords(daemon.registry().db, daemon.paths).list(mac=MAC)
        assert cut.state == "failed" and "quota" in cut.message
        assert put(daemon, token, "small.tar.zst", layer_upload({"etc/s": b"s"})).status == 202
    finally:
        daemon.stop()
