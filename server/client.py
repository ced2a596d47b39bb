"""Upload client, stdlib only: runs on a node that has nothing but Python (no aiohttp, no layerboot extras).

``upload()`` streams a tar.zst with ``PUT /nodes/<mac>/uploads/<name>`` and returns as soon as the server
answers 202 with the upload id; the bake happens later on the server. ``upload_status()`` polls one upload.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError

CHUNK = 1 << 20
TIMEOUT = 60.0
CREDENTIAL_FILE = Path("/run/layerboot/node.secret")   # issue 11: the per-node write secret stage1 claims


def boot_options(cmdline: str | None = None) -> dict[str, str]:
    """``layerboot.*=`` options of the kernel command line (server, node, token, ...), without the prefix."""
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            return {}
    return dict(w.removeprefix("layerboot.").split("=", 1) for w in cmdline.split()
                if w.startswith("layerboot.") and "=" in w)


def node_credential(cmdline: str | None = None) -> str | None:
    """Where this node keeps its write credential (heartbeats, uploads): the one place to change for issue 11.

    ``$LAYERBOOT_TOKEN``, else the root-only secret file once stage1 writes one, else today's token on the
    kernel command line (``layerboot.token=``).
    """
    if os.environ.get("LAYERBOOT_TOKEN"):
        return os.environ["LAYERBOOT_TOKEN"]
    try:
        secret = CREDENTIAL_FILE.read_text(encoding="utf-8").strip()
        if secret:
            return secret
    except OSError:
        pass
    return boot_options(cmdline).get("token") or None


def _connection(server: str) -> tuple[http.client.HTTPConnection, str]:
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise LayerbootError(f"server URL {server!r} must look like http://HOST:PORT")
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return cls(url.hostname, url.port, timeout=TIMEOUT), url.path.rstrip("/")


def _reply(response: http.client.HTTPResponse, what: str) -> dict[str, Any]:
    body = response.read()
    try:
        data = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = {"error": body.decode("utf-8", "replace").strip()[:300]}
    if response.status >= 300:
        message = data.get("error") or response.reason
        raise LayerbootError(f"{what} refused by the server: {response.status} {message}", hint=data.get("hint"))
    return data


def _request(server: str, method: str, path: str, token: str, *, body: Any = None,
             headers: dict[str, str] | None = None, what: str) -> dict[str, Any]:
    conn, prefix = _connection(server)
    try:
        try:
            conn.request(method, prefix + path, body=body, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/json", **(headers or {})})
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server refused early (quota, token) and closed: its answer may already be here
        return _reply(conn.getresponse(), what)
    except (OSError, http.client.HTTPException) as err:
        raise LayerbootError(f"{what}: cannot talk to {server}: {err}") from None
    finally:
        conn.close()


def upload(path: Path, *, server: str, mac: str, token: str, name: str | None = None) -> dict[str, Any]:
    """Send a captured tar.zst; returns the server's answer ({"id", "state", "size", "status_url"})."""
    name = name or path.name
    if not name.endswith(".tar.zst"):
        raise LayerbootError(f"{name}: uploads are tar.zst files ('layerboot capture' writes them)")
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise LayerbootError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        return _request(server, "PUT", f"/nodes/{urllib.parse.quote(mac)}/uploads/{urllib.parse.quote(name)}",
                        token, body=handle, what=f"upload of {path.name}",
                        headers={"Content-Length": str(size), "Content-Type": "application/zstd"})


def post_heartbeat(document: dict[str, Any], *, server: str, mac: str, token: str) -> dict[str, Any]:
    """POST a heartbeat (server/monitor/agent.py builds it); returns the server's answer."""
    return _request(server, "POST", f"/nodes/{urllib.parse.quote(mac)}/heartbeat", token,
                    body=json.dumps(document).encode("utf-8"), headers={"Content-Type": "application/json"},
                    what="heartbeat")


def upload_status(upload_id: str, *, server: str, mac: str, token: str) -> dict[str, Any]:
    return _request(server, "GET", f"/nodes/{urllib.parse.quote(mac)}/uploads/{urllib.parse.quote(upload_id)}",
                    token, what=f"status of upload {upload_id}")
