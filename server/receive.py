"""``PUT /nodes/{mac}/uploads/{name}.tar.zst``: stream an upload to disk, then hand it to the bake queue.

The body goes to ``incoming/.queue/<id>.part`` (never into memory), counted against ``bake.max_bytes`` and
the node's quota (server.quota: 507 beyond it, before a byte is stored when Content-Length says so); only
after the last byte is fsynced is it renamed to ``<id>.tar.zst`` and marked ``received``. The reply is 202
with the upload id as soon as the file is in place: the client does not wait for the bake, and can poll
``GET /nodes/{mac}/uploads/{id}``. A full disk under incoming/ is a 507 naming it, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from layerboot.atomic import fsync_dir
from layerboot.diskspace import require_space, storage_error
from layerboot.server.auth.access import for_node
from layerboot.server.guard.body import read_some
from layerboot.server.http import STATE, path_mac
from layerboot.server.quota import over
from layerboot.server.queue import QueueFull
from layerboot.server.uploads import UploadRecords, check_upload_name

log = logging.getLogger("layerboot.server.receive")

CHUNK = 1 << 20


def _finish(handle: object, part: Path, final: Path) -> None:
    handle.flush()                       # type: ignore[attr-defined]
    os.fsync(handle.fileno())            # type: ignore[attr-defined]
    handle.close()                       # type: ignore[attr-defined]
    os.replace(part, final)
    fsync_dir(final.parent)


async def handle_upload(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    mac = path_mac(request)
    node = for_node(state, request, mac, "uploading", boot=False).node
    assert node is not None
    name = check_upload_name(request.match_info["name"])
    limit = state.config.bake_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length,
                                            text=f"upload of {request.content_length} bytes is over the "
                                                 f"{limit}-byte quota (bake.max_bytes)")
    try:
        left = state.uploads.admit(node.mac)   # 503 when the queue is full, 507 when the node is at its quota
    except QueueFull as err:
        return_error = web.HTTPServiceUnavailable(text=err.message, headers={"Retry-After": "30"})
        raise return_error from None
    declared = request.content_length
    if declared is not None:
        if (too_much := over(node.mac, declared, left)) is not None:
            raise too_much
        require_space(state.paths.incoming, declared, what=f"an upload from {node.mac}")
    with state.slots.hold("upload", node.mac, state.limits.uploads_per_node, setting="server.max_uploads_per_node"):
        return await _receive(request, state, node, name, limit, left)


async def _receive(request: web.Request, state: Any, node: Any, name: str, limit: int,
                   left: int | None) -> web.StreamResponse:
    records: UploadRecords = state.uploads.records
    upload = records.begin(node.mac, node.profile, name, via="http")
    part, final = records.part_path(upload), Path(upload.path)
    loop = asyncio.get_running_loop()
    size = 0
    inflight = state.uploads.inflight
    inflight[upload.id] = 0
    try:
        handle = open(part, "wb", buffering=CHUNK)
        try:
            while chunk := await read_some(request, state.limits.read_timeout):
                size += len(chunk)
                inflight[upload.id] = size
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size,
                                                        text=f"upload is over the {limit}-byte quota (bake.max_bytes)")
                if (too_much := over(node.mac, size, left)) is not None:
                    raise too_much
                handle.write(chunk)
            if request.content_length is not None and size != request.content_length:
                raise web.HTTPBadRequest(text=f"upload ended after {size} of {request.content_length} bytes")
            if size == 0:
                raise web.HTTPBadRequest(text="empty upload")
            await loop.run_in_executor(None, _finish, handle, part, final)
        except BaseException:
            handle.close()
            raise
    except BaseException as exc:
        part.unlink(missing_ok=True)
        problem = storage_error(exc, part, doing="writing") if isinstance(exc, OSError) else None
        reason = (problem.message if problem else getattr(exc, "text", None) or getattr(exc, "message", None)
                  or f"{type(exc).__name__}: connection lost mid-upload")
        records.failed(upload.id, f"not received: {reason}")
        log.warning("upload %s from %s not received: %s", upload.id, node.mac, reason)
        if problem is not None:
            raise problem from None   # 507 naming the full filesystem, not a 500
        raise
    finally:
        inflight.pop(upload.id, None)
    upload = records.complete(upload, size)
    state.uploads.wake.set()
    log.info("upload %s from %s via http: %s (%d bytes) queued", upload.id, node.mac, name, size)
    return web.json_response({"id": upload.id, "state": upload.state, "size": size,
                              "status_url": f"/nodes/{node.mac}/uploads/{upload.id}"}, status=202)


async def handle_upload_status(request: web.Request) -> web.StreamResponse:
    from layerboot.server import negotiate
    state = request.app[STATE]
    mac = path_mac(request)
    for_node(state, request, mac, "an upload's status", boot=False, admin=True)
    upload = state.uploads.records.get(request.match_info["id"])
    if upload.mac != mac:
        raise web.HTTPNotFound(text=f"node {mac} has no upload {upload.id}")
    data = upload.to_dict()
    for private in ("path", "owner", "lease_until"):   # the server's own business
        data.pop(private, None)
    return negotiate.respond(request, f"upload {upload.id}: {upload.state}", data, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_put("/nodes/{mac}/uploads/{name}", handle_upload)
    app.router.add_get("/nodes/{mac}/uploads/{id}", handle_upload_status)
