"""SFTP uploads (asyncssh): per-node public keys, each node confined to its own upload area.

* The SSH user name is the node's MAC (``52-54-00-12-34-56`` or with colons); only the public keys registered
  for that node are accepted. No passwords, no shell or exec, no forwarding, no scp: SFTP only.
* The node sees ``incoming/<mac-with-dashes>/`` as ``/``. It may write, list, stat and rename plain files
  there; no subdirectories, links, deletes or reads.
* A file opened for writing is written as a hidden ``.NAME.part`` and renamed to ``NAME`` only when the client
  closes it with an SFTP CLOSE. When the session ends with the file still open (connection lost, client
  killed) the part is deleted, so a cut-off upload is never baked. A completed ``*.tar.zst`` goes straight
  into the bake queue.
* Writes past ``bake.max_bytes`` or the node's quota (server.quota) fail, and new uploads are refused while
  the bake queue is full, the node has its share of it (``server.max_queued_per_node``) or is at its quota.
* Availability, as for HTTP: connections count against ``server.max_connections_per_client`` (HTTP and SSH
  together; one more is closed at once), a login must finish within ``server.header_timeout``, and a session
  with no SFTP request for ``server.read_timeout`` seconds is closed (a partial file is discarded).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from layerboot.atomic import fsync_dir, write_bytes
from layerboot.diskspace import storage_error
from layerboot.errors import LayerbootError
from layerboot.server.guard.connections import client_key
from layerboot.server.guard.limits import TooBusy
from layerboot.server.nodes import normalize_mac
from layerboot.server.queue import QueueFull
from layerboot.server.quota import QuotaExceeded, over
from layerboot.server.sshkeys import normalize
from layerboot.server.uploads import is_complete_name, node_dir

log = logging.getLogger("layerboot.server.sftp")

FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,119}$")


def host_key(state_dir: Path) -> asyncssh.SSHKey:
    """The server's Ed25519 host key, created (mode 0600) on first start."""
    path = state_dir / "ssh_host_ed25519_key"
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        write_bytes(path.with_name(path.name + ".pub"), key.export_public_key())
        write_bytes(path, key.export_private_key(), mode=0o600)
        log.info("created SSH host key %s", path)
    return asyncssh.read_private_key(str(path))


class NodeSSHServer(asyncssh.SSHServer):
    """Public-key authentication against the node registry; user name = MAC."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.keys: set[str] = set()
        self.conn: asyncssh.SSHServerConnection | None = None
        self.client: str | None = None        # set while the connection holds a connection slot
        self.last_request = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        client = client_key(conn.get_extra_info("peername"))
        if not self.state.guard.admit(client, "SFTP"):
            conn.close()
            return
        self.client = client
        self.watchdog = asyncio.get_running_loop().call_later(self.state.limits.read_timeout, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.client is not None:
            self.state.guard.release(self.client)
            self.client = None

    def active(self) -> None:
        """The session made an SFTP request: it is not idle."""
        self.last_request = time.monotonic()

    def _idle_check(self) -> None:
        timeout = self.state.limits.read_timeout
        idle = time.monotonic() - self.last_request
        if idle < timeout:
            self.watchdog = asyncio.get_running_loop().call_later(timeout - idle, self._idle_check)
        elif self.conn is not None:
            log.warning("sftp: %s made no request for %d s (server.read_timeout); closing its session",
                        self.client, timeout)
            self.conn.close()

    def begin_auth(self, username: str) -> bool:
        try:
            mac = normalize_mac(username)
        except LayerbootError:
            return True   # no keys: authentication fails like any unknown user
        self.keys = set(self.state.registry.ssh_keys(mac))
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = normalize(key) in self.keys
        if not ok:
            log.warning("sftp: refused key %s for user %r", key.get_fingerprint(), username)
        return ok


@dataclass
class _Upload:
    handle: Any
    part: Path
    final: Path
    size: int = 0
    left: int | None = None   # bytes left in the node's quota when the file was opened (None: no limit)


def _denied(what: str) -> asyncssh.SFTPPermissionDenied:
    return asyncssh.SFTPPermissionDenied(f"{what} is not allowed here: upload NAME.tar.zst files only")


class NodeSFTPServer(asyncssh.SFTPServer):
    """One node's session, confined to its upload area."""

    def __init__(self, chan: asyncssh.SSHServerChannel, state: Any) -> None:
        self.state = state
        self.mac = normalize_mac(chan.get_extra_info("username"))
        area = node_dir(state.paths, self.mac)
        area.mkdir(parents=True, exist_ok=True)
        self.area = Path(os.path.realpath(area))
        super().__init__(chan, chroot=str(self.area).encode())
        self.max_bytes = state.config.bake_max_bytes
        owner = chan.get_connection().get_owner()
        self._touch = owner.active if isinstance(owner, NodeSSHServer) else (lambda: None)

    def _target(self, path: bytes) -> Path:
        """The file in the node's area a client path names; only plain names directly in the area."""
        self._touch()
        local = Path(os.fsdecode(self.map_path(path)))
        if local.parent != self.area or not FILE_RE.fullmatch(local.name):
            raise asyncssh.SFTPPermissionDenied(f"{local.name!r}: write plain file names directly in / "
                                                "(letters, digits, '.', '_', '+', '-')")
        return local

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        if not pflags & asyncssh.FXF_WRITE:
            raise _denied("reading")
        final = self._target(path)
        try:
            left = self.state.uploads.admit(self.mac)   # queue full, its share of it, or the node at its quota
        except (QueueFull, TooBusy, QuotaExceeded) as err:
            raise asyncssh.SFTPFailure(err.message) from None
        part = final.with_name(f".{final.name}.part")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        upload = _Upload(os.fdopen(fd, "r+b"), part, final, left=left)
        log.info("sftp: %s is uploading %s", self.mac, final.name)
        return upload

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        upload = file_obj
        assert isinstance(upload, _Upload)
        self._touch()
        if offset + len(data) > self.max_bytes:
            raise asyncssh.SFTPFailure(f"upload is over the {self.max_bytes}-byte quota (bake.max_bytes)")
        if (too_much := over(self.mac, offset + len(data), upload.left)) is not None:
            raise asyncssh.SFTPFailure(too_much.message)
        upload.handle.seek(offset)
        try:
            upload.handle.write(data)
        except OSError as err:
            problem = storage_error(err, upload.part, doing="writing")
            if problem is None:
                raise
            log.error("sftp: %s: %s", self.mac, problem.message)
            raise asyncssh.SFTPFailure(problem.message) from None
        upload.size = max(upload.size, offset + len(data))
        return len(data)

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        raise _denied("reading")

    def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        assert isinstance(file_obj, _Upload)
        return asyncssh.SFTPAttrs.from_local(os.fstat(file_obj.handle.fileno()))

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        return None   # modes and times of an upload do not matter; accept and ignore (sftp put -p)

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        return None

    def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Upload)
        complete = sys._getframe(1).f_code.co_name != "_cleanup"   # CLOSE from the client, not session end
        handle = file_obj.handle
        try:
            if complete:
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            handle.close()
        if not complete:
            file_obj.part.unlink(missing_ok=True)
            log.warning("sftp: %s lost the connection during %s; the partial file was discarded",
                        self.mac, file_obj.final.name)
            return
        os.replace(file_obj.part, file_obj.final)
        fsync_dir(self.area)
        log.info("sftp: %s uploaded %s (%d bytes)", self.mac, file_obj.final.name, file_obj.size)
        self._queue(file_obj.final)

    def _queue(self, path: Path) -> None:
        if is_complete_name(path.name):
            self.state.uploads.take_sftp_file(path)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        source, target = self._target(oldpath), self._target(newpath)
        if not source.is_file() or source.is_symlink():
            raise asyncssh.SFTPNoSuchFile(f"{source.name} does not exist")
        if target.exists():
            raise asyncssh.SFTPFileAlreadyExists(f"{target.name} already exists")
        os.rename(source, target)
        self._queue(target)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        source, target = self._target(oldpath), self._target(newpath)
        if not source.is_file() or source.is_symlink():
            raise asyncssh.SFTPNoSuchFile(f"{source.name} does not exist")
        os.replace(source, target)
        self._queue(target)

    def remove(self, path: bytes) -> None:
        raise _denied("deleting")

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise _denied("making directories")

    def rmdir(self, path: bytes) -> None:
        raise _denied("removing directories")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise _denied("symlinks")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise _denied("hard links")


async def start_sftp(state: Any, host: str, port: int) -> asyncssh.SSHAcceptor:
    """Listen for SFTP uploads; returns the acceptor (``.close()`` it to stop)."""
    key = host_key(state.paths.state)
    try:
        return await asyncssh.create_server(
            lambda: NodeSSHServer(state), host, port, server_host_keys=[key],
            sftp_factory=lambda chan: NodeSFTPServer(chan, state), allow_scp=False,
            agent_forwarding=False, x11_forwarding=False, allow_pty=False,
            server_version="layerbootd", login_timeout=state.limits.header_timeout)
    except OSError as err:
        raise LayerbootError(f"cannot listen for SFTP on {host}:{port}: {err.strerror}",
                             hint="change server.ssh_port (0 disables SFTP)") from None
