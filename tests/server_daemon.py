"""Run the real layerbootd as a subprocess on 127.0.0.1 (a free port) against a store in tmp_path."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from layerboot.overlays.profile import Profiles
from layerboot.paths import Paths
from layerboot.ports import free_port
from layerboot.run import Process
from layerboot.server.db import connect
from layerboot.server.nodes import Registry

MAC = "52:54:00:12:34:56"
OTHER_MAC = "52:54:00:ab:cd:ef"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Daemon:
    paths: Paths
    config: Path
    log: Path
    port: int = field(default_factory=free_port)
    ssh_port: int = 0
    proc: Process | None = None
    database: str = ""           # server.database the config names ("" : the store's SQLite file)
    _registry: Registry | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 15.0, env: dict[str, str] | None = None) -> "Daemon":
        argv = [sys.executable, "-m", "layerboot.server.main", "--config", str(self.config),
                "--port", str(self.port), "--listen", "127.0.0.1"]
        if self.ssh_port:
            argv += ["--ssh-port", str(self.ssh_port)]
        handle = open(self.log, "ab")
        self.proc = Process(argv, stdout=handle, stderr=handle,
                            env={"PYTHONPATH": os.pathsep.join(sys.path), **(env or {})})
        handle.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"layerbootd exited with {self.proc.poll()}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if not self.ssh_port or _open(self.ssh_port):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"layerbootd did not start listening:\n{self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate(timeout=10)
            self.proc = None

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, token: str | None = None, timeout: float = 30,
                source: str | None = None) -> Reply:
        """One request on a new connection; ``source`` binds the client to a loopback address (127.x.y.z) so it
        counts as another machine."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(source, 0) if source else None)
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def registry(self) -> Registry:
        """The daemon's registry, opened here in the test process (one connection pool per Daemon)."""
        if self._registry is None:
            self._registry = Registry(connect(self.database or self.paths.database))
        return self._registry

    def boot_token(self, mac: str = MAC) -> str:
        script = self.get(f"/boot/{mac}.ipxe").text
        return script.split("layerboot.token=")[1].split()[0]


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def write_config(path: Path, paths: Paths, **server: Any) -> Path:
    lines = [f'[store]\nroot = "{paths.root}"\n', "[server]"]
    for key, value in server.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def boot_profile(profiles: Profiles, make_layer: Any, tmp_path: Path, name: str = "p1") -> dict[str, str]:
    """A profile with a base, one overlay, a (fake) kernel and initrd; returns their digests."""
    store = profiles.store
    base = make_layer({"etc/os-release": "base\n"}, kind="base")
    overlay = make_layer({"etc/motd": f"{name}\n"}, base=base)
    kernel_file, initrd_file = tmp_path / f"vmlinuz-{name}", tmp_path / f"initrd-{name}"
    kernel_file.write_bytes(os.urandom(300_000))
    initrd_file.write_bytes(os.urandom(70_000))
    kernel = store.import_boot_file(kernel_file, kind="kernel").digest
    initrd = store.import_boot_file(initrd_file, kind="initrd").digest
    profiles.create(name, base, cmdline="console=ttyS0 quiet", kernel=kernel, initrd=initrd)
    profiles.add(name, overlay)
    return {"base": base, "overlay": overlay, "kernel": kernel, "initrd": initrd}


def layer_upload(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    """A tar.zst as 'layerboot capture' sends it: directories, files and overlayfs whiteouts (char 0/0)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = list(files) + list(whiteouts)
        for name in sorted({os.path.dirname(n) for n in names if os.path.dirname(n)}):
            member = tarfile.TarInfo(name)
            member.type, member.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(member)
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
        for name in whiteouts:
            member = tarfile.TarInfo(name)
            member.type, member.mode, member.devmajor, member.devminor = tarfile.CHRTYPE, 0o600, 0, 0
            tar.addfile(member)
    return zstandard.ZstdCompressor(level=1).compress(out.getvalue())
