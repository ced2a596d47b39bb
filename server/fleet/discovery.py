"""The discovery boot's HTTP side: unknown machines report their hardware and ask whether they are accepted.

    POST /discover/{mac}     a discovery report (JSON, at most 16 KiB): hardware facts and, from the discovery
                             menu, a request to become a clone. Anonymous: rate-limited per client address
                             (fleet.discovery_requests_per_minute), at most fleet.max_pending machines wait at
                             once. Answers {"state": "pending"|"accepted"|"rejected", "poll": SECONDS}.
    GET  /discover/{mac}     the same state, for the waiting machine's polls.

Only with ``server.unknown_mac = "discover"`` (404 otherwise). Nothing a report says takes effect by itself:
it makes or refreshes a pending record, which an admin accepts (``nodes accept``) or an enrollment rule the admin
wrote does. A MAC that is a node already is answered "accepted" (the machine reboots into its own boot).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from layerboot.server.fleet.enroll import auto_accept, check_facts

log = logging.getLogger("layerboot.fleet")

MAX_REPORT = 16 << 10


def _open(request: web.Request):  # noqa: ANN202 - (ServerState, mac, a 429 response or None)
    """The state and MAC of a discovery request, or the 429 that answers it (per client address)."""
    from layerboot.server import negotiate
    from layerboot.server.http import STATE, path_mac

    state = request.app[STATE]
    if state.config.server_unknown_mac != "discover" or state.fleet is None:
        raise web.HTTPNotFound(text="discovery is off on this server (server.unknown_mac)")
    mac = path_mac(request)
    wait = state.discovery_limiter.wait(request.remote or "-") if state.discovery_limiter else 0.0
    if wait:
        return state, mac, negotiate.error(request, 429, f"too many discovery requests from {request.remote}; try "
                                           f"again in {int(wait) + 1} s", headers={"Retry-After": str(int(wait) + 1)})
    return state, mac, None


def _answer(state, record_state: str, **extra: object) -> web.Response:  # noqa: ANN001
    from layerboot.server.http import NO_STORE
    return web.json_response({"state": record_state, "poll": state.config.fleet_discovery_poll, **extra},
                             headers=NO_STORE)


async def handle_report(request: web.Request) -> web.StreamResponse:
    from layerboot.server.http import read_json

    state, mac, refused = _open(request)
    if refused is not None:
        return refused
    if await asyncio.to_thread(state.fleet.key_of, mac):
        return _answer(state, "accepted")
    facts, wanted = check_facts(await read_json(request, MAX_REPORT, "discovery report"), mac)
    config = state.config
    record = await asyncio.to_thread(state.fleet.record_discovery, mac, facts, wanted, request.remote or "",
                                     max_pending=config.fleet_max_pending, keep=config.fleet_pending_keep)
    if record["reports"] == 1:
        dmi = facts["dmi"]
        log.info("discovery: unknown machine %s reported (%s %s, serial %s, %d CPUs, %d MB)%s", mac, dmi["vendor"],
                 dmi["product"], dmi["serial"], facts["cpus"], facts["memory"] >> 20,
                 f"; asks to become {wanted.get('name')}, a clone of {wanted.get('clone_of')}" if wanted else "")
    node = await asyncio.to_thread(auto_accept, state.fleet, record)
    if node is not None:
        return _answer(state, "accepted", node=node.name)
    return _answer(state, record["state"])


async def handle_poll(request: web.Request) -> web.StreamResponse:
    state, mac, refused = _open(request)
    if refused is not None:
        return refused
    if await asyncio.to_thread(state.fleet.key_of, mac):
        return _answer(state, "accepted")
    record = await asyncio.to_thread(state.fleet.discovery, mac)
    return _answer(state, record["state"] if record else "unknown")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/discover/{mac}", handle_report)
    app.router.add_get("/discover/{mac}", handle_poll)
