"""``/api/v1``: the versioned JSON API of layerbootd (described by ``GET /api/v1/openapi.json``).

Every route needs an admin: ``Authorization: Bearer`` with the admin token (``state/admin.token``) or an API
token (``layerboot admin token create``), or a console session cookie (changes then carry the session's CSRF
token in ``X-CSRF-Token``). Errors are JSON ``{"status", "error", "hint"}``. The records are those of the
CLI's ``--json`` output (server/api/fleet.py, store.py; the records' own ``to_dict``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from layerboot.errors import LayerbootError
from layerboot.server.api import actions
from layerboot.server.api.fleet import NodeQuery, dashboard, node_detail, node_records, query_nodes
from layerboot.server.api.store import layer_records, layer_usage, layer_record, profile_detail, profile_summaries
from layerboot.server.auth.web import admin_caller

PREFIX = "/api/v1"
MAX_BODY = 64 << 10
NO_STORE = {"Cache-Control": "no-store"}


def reply(data: Any, status: int = 200) -> web.Response:
    from layerboot import strictjson
    return web.Response(text=strictjson.dumps(data) + "\n", status=status, content_type="application/json",
                        headers=NO_STORE)


def _state(request: web.Request) -> Any:
    from layerboot.server.http import STATE
    return request.app[STATE]


async def _body(request: web.Request) -> dict[str, Any]:
    from layerboot.server.http import read_json
    if not request.can_read_body:
        return {}
    data = await read_json(request, MAX_BODY, "request body")
    if not isinstance(data, dict):
        raise LayerbootError("the request body is a JSON object")
    return data


def _uploads(state: Any) -> Any:
    from layerboot.server.uploads import UploadRecords
    return UploadRecords(state.registry.db, state.paths, default_policy=state.config.server_upload_policy)


# -- reading ---------------------------------------------------------------------------------------------------
async def get_status(request: web.Request) -> web.StreamResponse:
    from layerboot.server.http import status_data
    admin_caller(request)
    return reply(status_data(_state(request)))


async def get_dashboard(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    return reply(await asyncio.to_thread(dashboard, _state(request)))


async def get_nodes(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    query = NodeQuery.from_params(request.query)
    state = _state(request)
    page = await asyncio.to_thread(lambda: query_nodes(node_records(state), query))
    return reply(page.to_dict())


async def get_node(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    return reply(await asyncio.to_thread(node_detail, _state(request), request.match_info["mac"]))


async def get_profiles(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    return reply({"profiles": await asyncio.to_thread(profile_summaries, _state(request).profiles)})


async def get_profile(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    return reply(await asyncio.to_thread(profile_detail, _state(request).profiles, request.match_info["name"]))


async def get_generation(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    number = actions._generation_number(request.match_info["number"])
    gen = await asyncio.to_thread(_state(request).profiles.generation, request.match_info["name"], number)
    return reply(gen.to_dict())


async def get_diff(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    old = actions._generation_number(request.query.get("old", ""))
    new = actions._generation_number(request.query.get("new", ""))
    diff = await asyncio.to_thread(_state(request).profiles.diff, request.match_info["name"], old, new)
    return reply({"profile": request.match_info["name"], "old": old, "new": new} | diff.to_dict())


async def get_layers(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    state = _state(request)
    return reply({"layers": await asyncio.to_thread(layer_records, state.store, state.profiles)})


async def get_layer(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    state = _state(request)

    def one() -> dict[str, Any]:
        return layer_record(state.store.get(request.match_info["ref"]), layer_usage(state.profiles))

    return reply(await asyncio.to_thread(one))


async def get_uploads(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    uploads = await asyncio.to_thread(_uploads(_state(request)).listed, request.query.get("state", ""))
    return reply({"uploads": [u.public_dict() for u in reversed(uploads)]})


async def get_upload(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    upload = await asyncio.to_thread(_uploads(_state(request)).get, request.match_info["id"])
    return reply(upload.public_dict())


async def get_upload_changes(request: web.Request) -> web.StreamResponse:
    from layerboot.server.api.changes import upload_changes
    admin_caller(request)
    state = _state(request)
    records = _uploads(state)

    def changes() -> dict[str, Any]:
        upload = records.get(request.match_info["id"])
        return upload_changes(upload, state.profiles, state.config, records.allowed(upload.profile))

    return reply(await asyncio.to_thread(changes))


async def get_incidents(request: web.Request) -> web.StreamResponse:
    from layerboot.server.monitor.records import MonitorRecords
    admin_caller(request)
    states = ("open", "paused", "closed") if request.query.get("all") in ("1", "true") else ("open", "paused")
    found = await asyncio.to_thread(MonitorRecords(_state(request).registry.db).list, states=states)
    return reply({"incidents": [i.to_dict() for i in found]})


async def get_incident(request: web.Request) -> web.StreamResponse:
    from layerboot.server.monitor.records import MonitorRecords
    admin_caller(request)
    text = request.match_info["id"]
    if not text.isdigit():
        raise LayerbootError(f"{text[:20]!r} is not an incident number")
    records = MonitorRecords(_state(request).registry.db)

    def one() -> dict[str, Any]:
        found = records.get(int(text))
        return found.to_dict() | {"history": [h.to_dict() for h in records.history(found.id)]}

    return reply(await asyncio.to_thread(one))


async def get_imports(request: web.Request) -> web.StreamResponse:
    from layerboot.server.api.jobs import isos, oci_available, oci_images
    admin_caller(request)
    state = _state(request)
    jobs = await asyncio.to_thread(state.jobs.list)
    return reply({"jobs": [j.to_dict() for j in jobs], "isos": isos(state.config, state.paths),
                  "oci_images": oci_images(state.config, state.paths),
                  "kinds": {"iso": True, "debootstrap": True, "oci": oci_available()}})


async def get_import(request: web.Request) -> web.StreamResponse:
    admin_caller(request)
    return reply((await asyncio.to_thread(_state(request).jobs.get, request.match_info["id"])).to_dict())


async def get_openapi(request: web.Request) -> web.StreamResponse:
    from layerboot.server.api.openapi import document
    return web.json_response(document(), headers={"Cache-Control": "max-age=300"})


# -- changing --------------------------------------------------------------------------------------------------
async def post_power(request: web.Request) -> web.StreamResponse:
    caller = admin_caller(request)
    body = await _body(request)
    return reply(await actions.power(_state(request), request.match_info["mac"], str(body.get("action", "")),
                                     caller.who))


async def post_rollback(request: web.Request) -> web.StreamResponse:
    caller = admin_caller(request)
    body = await _body(request)
    gen = await asyncio.to_thread(actions.rollback, _state(request), request.match_info["name"],
                                  body.get("generation"), caller.who)
    return reply(gen.to_dict(), status=201)


async def post_cherry_pick(request: web.Request) -> web.StreamResponse:
    caller = admin_caller(request)
    body = await _body(request)
    gen = await asyncio.to_thread(actions.cherry_pick, _state(request), request.match_info["name"],
                                  body.get("from"), body.get("layer"), caller.who)
    return reply(gen.to_dict(), status=201)


async def post_upload(request: web.Request) -> web.StreamResponse:
    caller = admin_caller(request)
    action = actions.approve_upload if request.match_info["action"] == "approve" else actions.reject_upload
    upload = await asyncio.to_thread(action, _state(request), request.match_info["id"], caller.who)
    return reply(upload.public_dict())


async def post_incident(request: web.Request) -> web.StreamResponse:
    caller = admin_caller(request)
    changed = await asyncio.to_thread(actions.incident, _state(request), request.match_info["id"],
                                      request.match_info["action"], caller.who)
    return reply(changed.to_dict())


async def post_import(request: web.Request) -> web.StreamResponse:
    caller = admin_caller(request)
    body = await _body(request)
    kind = body.pop("kind", "")
    job = await asyncio.to_thread(actions.start_import, _state(request), kind, body, caller.who)
    return reply(job.to_dict(), status=202)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/openapi.json", get_openapi)
    r.add_get(f"{PREFIX}/status", get_status)
    r.add_get(f"{PREFIX}/dashboard", get_dashboard)
    r.add_get(f"{PREFIX}/nodes", get_nodes)
    r.add_get(f"{PREFIX}/nodes/{{mac}}", get_node)
    r.add_post(f"{PREFIX}/nodes/{{mac}}/power", post_power)
    r.add_get(f"{PREFIX}/profiles", get_profiles)
    r.add_get(f"{PREFIX}/profiles/{{name}}", get_profile)
    r.add_get(f"{PREFIX}/profiles/{{name}}/generations/{{number}}", get_generation)
    r.add_get(f"{PREFIX}/profiles/{{name}}/diff", get_diff)
    r.add_post(f"{PREFIX}/profiles/{{name}}/rollback", post_rollback)
    r.add_post(f"{PREFIX}/profiles/{{name}}/cherry-pick", post_cherry_pick)
    r.add_get(f"{PREFIX}/layers", get_layers)
    r.add_get(f"{PREFIX}/layers/{{ref}}", get_layer)
    r.add_get(f"{PREFIX}/uploads", get_uploads)
    r.add_get(f"{PREFIX}/uploads/{{id}}", get_upload)
    r.add_get(f"{PREFIX}/uploads/{{id}}/changes", get_upload_changes)
    r.add_post(f"{PREFIX}/uploads/{{id}}/{{action:approve|reject}}", post_upload)
    r.add_get(f"{PREFIX}/incidents", get_incidents)
    r.add_get(f"{PREFIX}/incidents/{{id}}", get_incident)
    r.add_post(f"{PREFIX}/incidents/{{id}}/{{action:pause|resume|close}}", post_incident)
    r.add_get(f"{PREFIX}/base-imports", get_imports)
    r.add_post(f"{PREFIX}/base-imports", post_import)
    r.add_get(f"{PREFIX}/base-imports/{{id}}", get_import)
