"""Upload client, stdlib only: runs on a node that has nothing but Python (no aiohttp, no layerboot extras).

``upload()`` streams a tar.zst with ``PUT /nodes/<mac>/uploads/<name>`` and returns as soon as the server
answers 202 with the upload id; the bake happens later on the server. ``upload_status()`` polls one upload.
Both send the node secret (the write credential; a boot token is refused with 403).
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from layerboot import strictjson
from layerboot.errors import LayerbootError
from layerboot.urls import parse_http_url

CHUNK = 1 << 20
TIMEOUT = 60.0
NODE_SECRET = Path("/run/layerboot/node.secret")   # the node's write credential, claimed by stage1 (root only)


def boot_options(cmdline: str | None = None) -> dict[str, str]:
    """``layerboot.*=`` options of the kernel command line (server, node, token, ...), without the prefix."""
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            return {}
    return dict(w.removeprefix("layerboot.").split("=", 1) for w in cmdline.split()
                if w.startswith("layerboot.") and "=" in w)


def read_secret(path: Path | None = None) -> str:
    """The node secret from ``path`` (default /run/layerboot/node.secret); one clear line when it cannot be."""
    explicit = path is not None
    path = path or NODE_SECRET
    try:
        secret = path.read_text(encoding="ascii").strip()
    except PermissionError:
        raise LayerbootError(f"{path} is readable by root only: this needs root",
                             hint="run it as root (sudo layerboot ...)") from None
    except FileNotFoundError:
        if explicit:
            raise LayerbootError(f"no such file: {path}") from None
        raise LayerbootError(f"no node secret at {path}: this boot did not claim one (see the boot log's "
                             "'node secret' line)", hint="pass --secret-file with a secret from 'layerboot nodes "
                             "register' or 'nodes secret rotate' on the server") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LayerbootError(f"cannot read the node secret {path}: {getattr(err, 'strerror', None) or err}") from None
    if not secret or not secret.isascii() or not secret.isprintable() or " " in secret:
        raise LayerbootError(f"{path} does not hold a node secret")
    return secret


def _connection(server: str) -> tuple[http.client.HTTPConnection, str]:
    url = parse_http_url(server)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return cls(url.host, url.port, timeout=TIMEOUT), url.path


def _reply(response: http.client.HTTPResponse, what: str) -> dict[str, Any]:
    body = response.read()
    try:
        data = strictjson.loads(body, what="the server's answer") if body else {}
    except strictjson.JSONError as err:
        if response.status < 300:
            raise LayerbootError(f"{what}: {err.message}") from None
        data = {"error": body.decode("utf-8", "replace").strip()[:300]}
    if not isinstance(data, dict):
        raise LayerbootError(f"{what}: the server's answer is not a JSON object")
    if response.status >= 300:
        message = data.get("error") or response.reason
        raise LayerbootError(f"{what} refused by the server: {response.status} {message}", hint=data.get("hint"))
    return data


def _request(server: str, method: str, path: str, secret: str, *, body: Any = None,
             headers: dict[str, str] | None = None, what: str) -> dict[str, Any]:
    conn, prefix = _connection(server)
    try:
        try:
            conn.request(method, prefix + path, body=body, headers={
                "Authorization": f"Bearer {secret}", "Accept": "application/json", **(headers or {})})
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server refused early (quota, token) and closed: its answer may already be here
        return _reply(conn.getresponse(), what)
    except (OSError, http.client.HTTPException) as err:
        raise LayerbootError(f"{what}: cannot talk to {server}: {err}") from None
    finally:
        conn.close()


def upload(path: Path, *, server: str, mac: str, secret: str, name: str | None = None) -> dict[str, Any]:
    """Send a captured tar.zst with the node secret; returns the server's answer ({"id", "state", "size",
    "status_url"})."""
    name = name or path.name
    if not name.endswith(".tar.zst"):
        raise LayerbootError(f"{name}: uploads are tar.zst files ('layerboot capture' writes them)")
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise LayerbootError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        reply = _request(server, "PUT", f"/nodes/{urllib.parse.quote(mac)}/uploads/{urllib.parse.quote(name)}",
                         secret, body=handle, what=f"upload of {path.name}",
                         headers={"Content-Length": str(size), "Content-Type": "application/zstd"})
    return _fields(reply, f"upload of {path.name}", id=str, state=str, size=int)


def post_heartbeat(document: dict[str, Any], *, server: str, mac: str, secret: str) -> dict[str, Any]:
    """POST a heartbeat (server/monitor/agent.py builds it) with the node secret; returns the server's answer."""
    return _request(server, "POST", f"/nodes/{urllib.parse.quote(mac)}/heartbeat", secret,
                    body=json.dumps(document).encode("utf-8"), headers={"Content-Type": "application/json"},
                    what="heartbeat")


def upload_status(upload_id: str, *, server: str, mac: str, secret: str) -> dict[str, Any]:
    reply = _request(server, "GET", f"/nodes/{urllib.parse.quote(mac)}/uploads/{urllib.parse.quote(upload_id)}",
                     secret, what=f"status of upload {upload_id}")
    return _fields(reply, f"status of upload {upload_id}", state=str)


def _fields(reply: dict[str, Any], what: str, **types: type) -> dict[str, Any]:
    """The answer, once the fields the caller relies on are there with the right types."""
    for key, kind in types.items():
        value = reply.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise LayerbootError(f"{what}: the server's answer has no valid {key!r}")
    return reply
