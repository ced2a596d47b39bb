"""The monitor's routes on layerbootd:

    POST /nodes/{mac}/heartbeat    a node's runtime heartbeat (JSON, server/monitor/model.py)   (write credential)
    GET  /metrics                  Prometheus text format (public: counts and node states, no secrets)
    GET  /incidents                open incidents (``?all=1``: closed ones too), JSON             (admin token)
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from layerboot.server import negotiate
from layerboot.server.auth.access import ADMIN, bearer, identify
from layerboot.server.http import NO_STORE, STATE, authenticate_write, path_mac, read_json
from layerboot.server.monitor.model import Heartbeat
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.nodes import AuthError

log = logging.getLogger("layerboot.monitor")

MAX_HEARTBEAT_BYTES = 16 << 10


async def handle_heartbeat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    node = authenticate_write(request, path_mac(request))
    beat = Heartbeat.from_json(await read_json(request, MAX_HEARTBEAT_BYTES, "a heartbeat"), received=time.time())
    await asyncio.to_thread(MonitorRecords(state.registry.db).record_heartbeat, node, beat)
    if state.metrics is not None:
        state.metrics.heartbeats.inc()
    log.debug("heartbeat from %s: generation %s, uptime %s", node.mac, beat.generation, beat.uptime)
    return web.json_response({"recorded": True}, status=201, headers=NO_STORE)


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body, content_type = await state.metrics.render()
    response = web.Response(body=body, headers=NO_STORE)
    response.headers["Content-Type"] = content_type
    return response


async def handle_incidents(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    missing = "the incident list needs the admin token (state/admin.token in the store)"
    if identify(state, bearer(request), missing).kind != ADMIN:
        raise AuthError(missing, status=403)
    records = MonitorRecords(state.registry.db)
    states = ("open", "paused", "closed") if request.query.get("all") else ("open", "paused")
    incidents = await asyncio.to_thread(records.list, states=states)
    return negotiate.respond(request, f"layerboot incidents ({len(incidents)})",
                             {"incidents": [i.to_dict() for i in incidents]}, headers=NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/nodes/{mac}/heartbeat", handle_heartbeat)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/incidents", handle_incidents)
