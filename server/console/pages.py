"""The console's pages (GET): dashboard, nodes, node, profiles, profile, layers, uploads, upload, incidents,
base import. Each reads the same records the API sends (server/api/) and renders one template."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from layerboot.errors import LayerbootError
from layerboot.server.api.fleet import PER_PAGE, SORT_KEYS, NodeQuery, dashboard, node_detail, node_records, \
    query_nodes
from layerboot.server.api.store import layer_records, profile_detail, profile_summaries
from layerboot.server.console.app import PREFIX, _state, page
from layerboot.server.console.charts import timing_chart
from layerboot.server.monitor.detectors import STATES

render = aiohttp_jinja2.render_template


def _uploads(state: Any) -> Any:
    from layerboot.server.uploads import UploadRecords
    return UploadRecords(state.registry.db, state.paths, default_policy=state.config.server_upload_policy)


@page
async def dashboard_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    data = await asyncio.to_thread(dashboard, state)
    uploads = await asyncio.to_thread(_uploads(state).counts)
    return render("dashboard.html", request, {"title": "Dashboard", "data": data, "uploads": uploads,
                                              "states": STATES, "refresh": 15})


@page
async def nodes_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    query = NodeQuery.from_params(request.query)
    result = await asyncio.to_thread(lambda: query_nodes(node_records(state), query))
    return render("nodes.html", request, {"title": "Nodes", "result": result, "query": query, "states": STATES,
                                          "sort_keys": SORT_KEYS, "per_page_choices": PER_PAGE,
                                          "profiles": state.profiles.names(), "refresh": 30})


@page
async def node_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    mac = request.match_info["mac"]
    node = await asyncio.to_thread(node_detail, state, mac)
    power_configured = await asyncio.to_thread(_has_power, state, node["mac"])
    shown_elsewhere = {"events", "heartbeat", "ssh_keys", "incidents", "interfaces", "fleet"}
    fields = [(k, v) for k, v in node.items() if k not in shown_elsewhere]
    return render("node.html", request, {
        "title": f"Node {node['name'] or node['mac']}", "node": node, "fields": fields,
        "chart": timing_chart(node["events"]), "events": list(reversed(node["events"])), "power": power_configured,
        "refresh": 20})


def _has_power(state: Any, mac: str) -> bool:
    from layerboot.server.monitor.power import Targets, power_file
    targets = state.monitor.targets if state.monitor is not None else Targets(power_file(state.config, state.paths))
    try:
        targets.get(mac)
    except LayerbootError:
        return False
    return True


@page
async def profiles_page(request: web.Request) -> web.StreamResponse:
    found = await asyncio.to_thread(profile_summaries, _state(request).profiles)
    return render("profiles.html", request, {"title": "Profiles", "profiles": found})


@page
async def profile_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    name = request.match_info["name"]
    detail = await asyncio.to_thread(profile_detail, state.profiles, name)
    numbers = [g["number"] for g in detail["generations"]]
    diff = None
    old, new = request.query.get("old"), request.query.get("new")
    if old or new:
        from layerboot.server.api.actions import _generation_number
        old_n, new_n = _generation_number(old or ""), _generation_number(new or "")
        result = await asyncio.to_thread(state.profiles.diff, name, old_n, new_n)
        store = state.store
        describe = {d: (store.get(d).description if store.paths.object_meta(d).exists() else "not in the store")
                    for d in (*result.added, *result.removed)}
        diff = {"old": old_n, "new": new_n, "result": result, "describe": describe}
    others = [p for p in state.profiles.names() if p != name]
    picks = await asyncio.to_thread(_pickable, state, name, others)
    return render("profile.html", request, {"title": f"Profile {name}", "profile": detail, "numbers": numbers,
                                            "diff": diff, "picks": picks})


def _pickable(state: Any, name: str, others: list[str]) -> list[dict[str, Any]]:
    """Overlay layers of other profiles' current generations that this profile does not stack yet."""
    current = set(state.profiles.current(name).chain)
    found = []
    for other in others:
        try:
            gen = state.profiles.current(other)
        except LayerbootError:
            continue
        for digest in gen.layers[1:]:
            if digest not in current:
                layer = state.store.get(digest)
                found.append({"profile": other, "digest": digest, "description": layer.description,
                              "base_matches": layer.base == gen.base})
    return found


@page
async def layers_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    layers = await asyncio.to_thread(layer_records, state.store, state.profiles)
    kind = request.query.get("kind", "")
    if kind:
        layers = [layer for layer in layers if layer["kind"] == kind]
    return render("layers.html", request, {"title": "Layers", "layers": list(reversed(layers)), "kind": kind,
                                           "total": sum(layer["size"] for layer in layers)})


@page
async def uploads_page(request: web.Request) -> web.StreamResponse:
    records = _uploads(_state(request))
    uploads = await asyncio.to_thread(records.list)
    held = [u.public_dict() for u in reversed(uploads) if u.held]
    others = [u.public_dict() for u in reversed(uploads) if not u.held][:200]
    return render("uploads.html", request, {"title": "Uploads", "held": held, "others": others, "refresh": 20})


@page
async def upload_page(request: web.Request) -> web.StreamResponse:
    from layerboot.server.api.changes import upload_changes
    state = _state(request)
    records = _uploads(state)
    upload = await asyncio.to_thread(records.get, request.match_info["id"])
    try:
        changes = await asyncio.to_thread(upload_changes, upload, state.profiles, state.config,
                                          records.allowed(upload.profile))
        problem = ""
    except LayerbootError as err:
        changes, problem = None, err.message
    return render("upload.html", request, {"title": f"Upload {upload.id}", "upload": upload.public_dict(),
                                           "changes": changes, "problem": problem})


@page
async def incidents_page(request: web.Request) -> web.StreamResponse:
    from layerboot.server.monitor.records import MonitorRecords
    records = MonitorRecords(_state(request).registry.db)
    show_all = request.query.get("all") == "1"
    states = ("open", "paused", "closed") if show_all else ("open", "paused")
    found = await asyncio.to_thread(records.list, states=states, limit=500)
    chosen = request.query.get("id", "")
    history = []
    if chosen.isdigit():
        history = [h.to_dict() for h in await asyncio.to_thread(records.history, int(chosen))]
    return render("incidents.html", request, {"title": "Incidents", "incidents": [i.to_dict() for i in found],
                                              "all": show_all, "chosen": chosen, "history": history,
                                              "refresh": 30})


@page
async def imports_page(request: web.Request) -> web.StreamResponse:
    from layerboot.server.api.jobs import import_dir, isos, oci_available, oci_images
    state = _state(request)
    jobs = await asyncio.to_thread(state.jobs.list)
    running = any(j.state in ("queued", "running") for j in jobs)
    return render("imports.html", request, {
        "title": "Base import", "jobs": [j.to_dict() for j in jobs], "isos": isos(state.config, state.paths),
        "oci_images": oci_images(state.config, state.paths), "import_dir": str(import_dir(state.config, state.paths)),
        "oci": oci_available(),
        "refresh": 3 if running else 0})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/", dashboard_page)
    r.add_get(PREFIX, redirect_home)
    r.add_get(f"{PREFIX}/nodes", nodes_page)
    r.add_get(f"{PREFIX}/nodes/{{mac}}", node_page)
    r.add_get(f"{PREFIX}/profiles", profiles_page)
    r.add_get(f"{PREFIX}/profiles/{{name}}", profile_page)
    r.add_get(f"{PREFIX}/layers", layers_page)
    r.add_get(f"{PREFIX}/uploads", uploads_page)
    r.add_get(f"{PREFIX}/uploads/{{id}}", upload_page)
    r.add_get(f"{PREFIX}/incidents", incidents_page)
    r.add_get(f"{PREFIX}/base", imports_page)


async def redirect_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{PREFIX}/")
