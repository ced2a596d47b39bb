"""SFTP uploads to the real layerbootd: right key, wrong key, confinement, cut-off transfers, OpenSSH sftp."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from layerboot.overlays.profile import Profiles
from layerboot.run import run
from layerboot.server.sshkeys import normalize
from layerboot.server.uploads import UploadRecords
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, free_port, write_config
from test_server_uploads import layer_upload

USER = MAC.replace(":", "-")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, asyncssh.SSHKey]:
    return {name: asyncssh.generate_private_key("ssh-ed25519") for name in ("node", "other", "stranger")}


def _daemon(profiles: Profiles, make_layer, tmp_path: Path, keys: dict[str, asyncssh.SSHKey],
            **server: object) -> Iterator[Daemon]:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, upload_policy="auto", **server)
    d = Daemon(profiles.paths, config, tmp_path / "layerbootd.log", ssh_port=free_port())
    registry = d.registry()
    registry.register(MAC, "p1", ssh_keys=(normalize(keys["node"]),))
    registry.register(OTHER_MAC, "p1", ssh_keys=(normalize(keys["other"]),))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def daemon(profiles: Profiles, make_layer, tmp_path: Path, keys: dict[str, asyncssh.SSHKey]) -> Iterator[Daemon]:
    yield from _daemon(profiles, make_layer, tmp_path, keys)


def records(daemon: Daemon) -> UploadRecords:
    return UploadRecords(daemon.registry().db, daemon.paths)


def wait_baked(daemon: Daemon, count: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [u for u in records(daemon).list() if u.state in ("baked", "failed")]
        if len(done) >= count:
            return done
        time.sleep(0.05)
    raise AssertionError(f"uploads not baked: {records(daemon).list()}\n{daemon.log.read_text()}")


async def _session(daemon: Daemon, key: asyncssh.SSHKey, user: str = USER):  # noqa: ANN202
    return await asyncssh.connect("127.0.0.1", daemon.ssh_port, username=user, client_keys=[key],
                                  known_hosts=None, agent_path=None, password=None)


def test_sftp_upload_with_the_right_key_is_baked(daemon: Daemon, keys: dict, profiles: Profiles) -> None:
    data = layer_upload({"etc/sftp": b"over sftp\n"})

    async def go() -> list[str]:
        async with await _session(daemon, keys["node"]) as conn:
            async with conn.start_sftp_client() as sftp:
                async with sftp.open("change.tar.zst", "wb") as handle:
                    await handle.write(data[:1000])
                    assert not (daemon.paths.incoming / USER / "change.tar.zst").exists()  # not complete yet
                    await handle.write(data[1000:])
                return await sftp.listdir(".")

    asyncio.run(go())
    [upload] = wait_baked(daemon, 1)
    assert upload.state == "baked" and upload.via == "sftp" and upload.mac == MAC and upload.size == len(data)
    assert profiles.current("p1").layers[-1] == upload.layer
    image = profiles.store.path(upload.layer)
    assert run(["rdsquashfs", "-c", "etc/sftp", image]).stdout == b"over sftp\n"


def test_wrong_key_and_another_nodes_key_are_refused(daemon: Daemon, keys: dict) -> None:
    async def attempt(key: asyncssh.SSHKey, user: str) -> None:
        async with await _session(daemon, key, user):
            pass

    for key, user in ((keys["stranger"], USER), (keys["other"], USER), (keys["node"], "root"),
                      (keys["node"], "02-00-00-00-00-09")):
        with pytest.raises(asyncssh.PermissionDenied):
            asyncio.run(attempt(key, user))


def test_confined_to_the_nodes_own_area(daemon: Daemon, keys: dict) -> None:
    async def go() -> None:
        async with await _session(daemon, keys["node"]) as conn:
            async with conn.start_sftp_client() as sftp:
                for path in ("../../keys/x.tar.zst", f"../{OTHER_MAC.replace(':', '-')}/x.tar.zst", "sub/x.tar.zst",
                             "/../../../etc/x.tar.zst", ".hidden.tar.zst"):
                    with pytest.raises((asyncssh.SFTPPermissionDenied, asyncssh.SFTPNoSuchFile)):
                        async with sftp.open(path, "wb") as handle:
                            await handle.write(b"x")
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.mkdir("sub")
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.symlink("/etc/passwd", "link.tar.zst")
                with pytest.raises((asyncssh.SFTPPermissionDenied, asyncssh.SFTPNoSuchFile)):
                    await sftp.get("/../../keys/signing.key", os.devnull)   # resolves inside the area
                assert sorted(await sftp.listdir("/../..")) == sorted(await sftp.listdir("/"))
                # ssh exec and shells are not offered at all
                with pytest.raises((asyncssh.ChannelOpenError, asyncssh.ProcessError, OSError)):
                    await conn.run("id", check=True)

    asyncio.run(go())
    assert not list(daemon.paths.keys.glob("x*")) and not (daemon.paths.root.parent / "etc").exists()
    other_area = daemon.paths.incoming / OTHER_MAC.replace(":", "-")
    assert not other_area.exists() or not list(other_area.iterdir())
    assert records(daemon).list() == []


def test_cut_off_transfer_is_discarded_not_baked(daemon: Daemon, keys: dict) -> None:
    data = layer_upload({"etc/big": os.urandom(1_000_000)})

    async def go() -> None:
        conn = await _session(daemon, keys["node"])
        sftp = await conn.start_sftp_client()
        handle = await sftp.open("cut.tar.zst", "wb")
        await handle.write(data[: len(data) // 2])
        conn.abort()   # the node dies mid-transfer
        await asyncio.sleep(0.1)

    asyncio.run(go())
    area = daemon.paths.incoming / USER
    deadline = time.monotonic() + 10
    while list(area.iterdir()):
        assert time.monotonic() < deadline, list(area.iterdir())
        time.sleep(0.05)
    time.sleep(0.3)
    assert records(daemon).list() == []
    assert "partial file was discarded" in daemon.log.read_text()


def test_an_idle_session_is_closed_and_one_address_gets_only_its_connections(
        profiles: Profiles, make_layer, tmp_path: Path, keys: dict) -> None:
    """Issue 11 item 7 for SFTP: server.read_timeout closes a session that stalls mid-upload (the partial file
    goes), and server.max_connections_per_client counts SSH connections per address."""
    for daemon in _daemon(profiles, make_layer, tmp_path, keys, read_timeout=2, max_connections_per_client=2):
        deadline = time.monotonic() + 10       # until the start-up probes' connections are gone
        while (reply := daemon.get("/status", headers={"Accept": "application/json"})).status != 200 or \
                reply.json()["in_progress"]["connections"] > 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        async def go() -> float:
            conn = await _session(daemon, keys["node"])
            sftp = await conn.start_sftp_client()
            handle = await sftp.open("stall.tar.zst", "wb")
            await handle.write(b"x" * 1000)
            other_user = OTHER_MAC.replace(":", "-")
            extra = await _session(daemon, keys["other"], other_user)  # the second connection of 127.0.0.1
            with pytest.raises((asyncssh.Error, OSError)):              # the third is closed at once
                await _session(daemon, keys["other"], other_user)
            other = await asyncssh.connect("127.0.0.1", daemon.ssh_port, username=other_user,
                                           client_keys=[keys["other"]], known_hosts=None, agent_path=None,
                                           password=None, local_addr=("127.0.0.2", 0))
            other.close()
            extra.close()
            started = time.monotonic()
            await conn.wait_closed()                                 # the node stalls; the server hangs up
            return time.monotonic() - started

        assert asyncio.run(asyncio.wait_for(go(), 20)) < 4
        deadline = time.monotonic() + 10
        while list((daemon.paths.incoming / USER).iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        log = daemon.log.read_text()
        assert "made no request for 2 s (server.read_timeout)" in log and "partial file was discarded" in log
        assert "refusing SFTP connections from 127.0.0.1" in log and "Traceback" not in log


@pytest.mark.skipif(not shutil.which("sftp"), reason="OpenSSH sftp client not installed")
def test_openssh_sftp_client_put(daemon: Daemon, keys: dict, tmp_path: Path, profiles: Profiles) -> None:
    key_file = tmp_path / "id_node"
    key_file.write_bytes(keys["node"].export_private_key())
    key_file.chmod(0o600)
    upload = tmp_path / "openssh.tar.zst"
    upload.write_bytes(layer_upload({"etc/openssh": b"put\n"}))
    run(["sftp", "-b", "-", "-P", str(daemon.ssh_port), "-i", key_file, "-o", "StrictHostKeyChecking=no",
         "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", f"{USER}@127.0.0.1"], input=f"put {upload}\n".encode(), timeout=60)
    [done] = wait_baked(daemon, 1)
    assert done.state == "baked" and done.name == "openssh.tar.zst"


def test_kill_9_during_sftp_upload_leaves_nothing_to_bake(daemon: Daemon, keys: dict) -> None:
    data = layer_upload({"etc/big": os.urandom(500_000)})
    area = daemon.paths.incoming / USER

    async def start_upload() -> asyncssh.SSHClientConnection:
        conn = await _session(daemon, keys["node"])
        sftp = await conn.start_sftp_client()
        handle = await sftp.open("killed.tar.zst", "wb")
        await handle.write(data[:100_000])
        return conn

    async def go() -> None:
        conn = await start_upload()
        assert [p.name for p in area.iterdir()] == [".killed.tar.zst.part"]
        daemon.kill9()
        conn.abort()

    asyncio.run(go())
    daemon.start()
    assert list(area.iterdir()) == []
    assert records(daemon).list() == []
