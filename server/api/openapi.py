"""The OpenAPI 3.1 document of ``/api/v1``, served at ``GET /api/v1/openapi.json``.

Written here by hand, next to the routes (server/api/routes.py), and checked against them: tests/test_api.py
validates every route's real responses, on SQLite and PostgreSQL, with openapi-core, and checks that every
route the application registers under /api/v1 is in the document and the other way round. Records allow
properties beyond those listed (``additionalProperties``), so a field added to a record is not a breaking
change; the listed ones are always there with these types (a node known by MAC only has no ``groups`` and
``interfaces``, a named node has them).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from layerboot import __version__
from layerboot.server.api.fleet import SORT_KEYS

STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
OBJ = {"type": "object"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def record(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required), "properties": required | optional,
            "additionalProperties": True}


def array(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": schema}


DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
TIME = nullable(STR)
SCHEMAS: dict[str, Any] = {
    "Error": record({"status": INT, "error": STR}, hint=STR),
    "Status": record({"service": STR, "version": STR, "uptime": INT, "nodes": INT, "profiles": INT,
                      "in_progress": OBJ}, uploads=OBJ),
    "Event": record({"stage": STR, "ok": BOOL, "generation": nullable(INT), "serial": nullable(INT),
                     "elapsed": nullable(NUM), "message": STR, "time": STR,
                     "timings": {"type": "object", "additionalProperties": NUM}}),
    "Node": record({"mac": STR, "profile": STR, "auto": BOOL, "created": STR, "last_seen": TIME,
                    "last_stage": nullable(STR), "last_ok": nullable(BOOL), "last_generation": nullable(INT),
                    "failures": INT, "boots": INT, "state": STR, "heartbeat_age": nullable(NUM),
                    "generation": nullable(INT), "newest": nullable(INT), "good_generation": nullable(INT),
                    "pinned_generation": nullable(INT), "incidents": array(STR), "name": nullable(STR),
                    "cluster": STR},
                   groups=array(STR), interfaces=array(ref("Interface"))),
    "Interface": record({"device": STR}, mac=STR, ipv4=STR, gateway=STR, ipv6=STR, gateway6=STR, mtu=INT, vlan=INT,
                        bond=STR, bond_options=STR),
    "NodePage": record({"nodes": array(ref("Node")), "total": INT, "page": INT, "per_page": INT, "pages": INT,
                        "counts": {"type": "object", "additionalProperties": INT}}),
    "NodeDetail": {"allOf": [ref("Node"), record({"heartbeat": nullable(OBJ), "ssh_keys": array(STR),
                                                  "events": array(ref("Event"))},
                                                 fleet=record({"name": STR, "interfaces": array(ref("Interface")),
                                                               "sources": OBJ, "manifest": nullable(OBJ),
                                                               "host_keys": array(record({"type": STR,
                                                                                          "fingerprint": STR}))}))]},
    "PowerResult": record({"mac": STR, "driver": STR, "state": STR, "error": nullable(STR)}),
    "Generation": record({"profile": STR, "number": INT, "layers": array(DIGEST), "action": STR, "serial": INT,
                          "cmdline": STR, "kernel": nullable(DIGEST), "initrd": nullable(DIGEST), "created": STR,
                          "modules": nullable(DIGEST)}),
    "ProfileSummary": record({"name": STR, "generations": INT, "current": ref("Generation")}),
    "ProfileDetail": record({"name": STR, "current": ref("Generation"), "chain": array(OBJ),
                             "generations": array(ref("Generation"))}),
    "Diff": record({"profile": STR, "old": INT, "new": INT, "added": array(DIGEST), "removed": array(DIGEST),
                    "reordered": BOOL, "changes": array(STR), "empty": BOOL}),
    "Layer": record({"digest": DIGEST, "kind": {"enum": ["base", "overlay", "kernel", "initrd", "modules"]},
                     "size": INT, "created": STR, "source": STR, "base": nullable(DIGEST),
                     "parent": nullable(DIGEST), "description": STR, "fsverity": nullable(DIGEST),
                     "used_by": array(STR), "used_before_by": array(STR)}),
    "Upload": record({"id": STR, "mac": STR, "profile": STR, "name": STR, "size": INT, "via": STR,
                      "state": {"enum": ["receiving", "received", "baking", "retry", "baked", "failed"]},
                      "held": BOOL, "received": STR, "updated": STR, "layer": nullable(DIGEST),
                      "generation": nullable(INT), "message": STR, "attempts": INT, "last_error": STR}),
    "UploadChanges": record({"upload": STR, "profile": STR, "against_generation": INT, "source": STR,
                             "counts": record({"add": INT, "change": INT, "delete": INT}), "total": INT,
                             "truncated": BOOL,
                             "changes": array(record({"path": STR, "action": {"enum": ["add", "change", "delete"]},
                                                      "kind": STR}))}),
    "Incident": record({"id": INT, "mac": STR, "type": STR, "state": {"enum": ["open", "paused", "closed"]},
                        "summary": STR, "opened": STR, "updated": STR, "closed": TIME, "closed_by": STR,
                        "step": INT, "tries": INT, "next_at": TIME, "flagged": BOOL, "reopened": INT}),
    "IncidentDetail": {"allOf": [ref("Incident"), record({"history": array(record(
        {"time": STR, "kind": STR, "action": STR, "result": STR, "message": STR}))})]},
    "Job": record({"id": STR, "kind": {"enum": ["iso", "debootstrap", "oci"]}, "params": OBJ,
                   "state": {"enum": ["queued", "running", "done", "failed"]}, "progress": STR, "result": OBJ,
                   "error": STR, "started_by": STR, "created": STR, "updated": STR, "finished": TIME,
                   "seconds": NUM}),
    "BaseImports": record({"jobs": array(ref("Job")), "isos": array(record({"name": STR, "size": INT})),
                           "oci_images": array(record({"name": STR, "size": INT})),
                           "kinds": record({"iso": BOOL, "debootstrap": BOOL, "oci": BOOL})}),
    "Dashboard": record({"nodes": INT, "states": {"type": "object", "additionalProperties": INT},
                         "boots_last_hour": record({"events": INT, "failed": INT, "nodes": INT,
                                                    "recent": array(OBJ)}),
                         "incidents": array(ref("Incident"))}),
}


def _param(name: str, where: str, schema: dict[str, Any], text: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": text}


def _body(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"required": True, "description": text, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str, schema: str, *, status: str = "200", params: list[Any] | None = None,
        body: dict[str, Any] | None = None, errors: tuple[str, ...] = ("400", "401", "403", "404")) -> dict[str, Any]:
    responses: dict[str, Any] = {status: {"description": ok, "content": {"application/json": {"schema": ref(schema)}}}}
    for code in errors:
        responses[code] = {"$ref": "#/components/responses/Error"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


MAC = _param("mac", "path", STR, "the node: its name or any of its MAC addresses (52:54:00:12:34:56)")
NAME = _param("name", "path", STR, "profile name")
UPLOAD = _param("id", "path", STR, "upload id")
INCIDENT = _param("id", "path", {"type": "string", "pattern": "^[0-9]+$"}, "incident number")


def paths() -> dict[str, Any]:
    node_query = [
        _param("q", "query", STR, "part of the node's name, of one of its MACs or of its profile's name"),
        _param("state", "query", {"enum": ["unknown", "booting", "stuck", "failed", "up", "down", "booted"]},
               "only nodes in this state"),
        _param("profile", "query", STR, "only nodes of this profile"),
        _param("sort", "query", {"enum": list(SORT_KEYS)}, "sort column (state: worst first)"),
        _param("order", "query", {"enum": ["asc", "desc"]}, "sort direction"),
        _param("page", "query", {"type": "integer", "minimum": 1}, "page number (from 1)"),
        _param("per_page", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows per page (50)"),
    ]
    return {
        "/status": {"get": _op("Daemon status (counts, no secrets)", "status", "Status", errors=("401", "403"))},
        "/dashboard": {"get": _op("Node states, open incidents, boots in the last hour", "the dashboard",
                                  "Dashboard", errors=("401", "403"))},
        "/nodes": {"get": _op("The nodes table: filtered, sorted and paged on the server", "one page of nodes",
                              "NodePage", params=node_query, errors=("400", "401", "403"))},
        "/nodes/{mac}": {"get": _op("One node: record, live status, heartbeat, SSH keys, boot events",
                                    "the node", "NodeDetail", params=[MAC])},
        "/nodes/{mac}/power": {"post": _op(
            "Power the node on, off, cycle it, or read its power state (through its BMC)", "the power state after it",
            "PowerResult", params=[MAC], body=_body(record({"action": {"enum": ["on", "off", "cycle", "status"]}}),
                                                    "what to do"), errors=("400", "401", "403", "404", "502"))},
        "/profiles": {"get": _op("Every profile with its current generation", "the profiles", "ProfileList",
                                 errors=("401", "403"))},
        "/profiles/{name}": {"get": _op("A profile: current generation, its chain, every generation",
                                        "the profile", "ProfileDetail", params=[NAME])},
        "/profiles/{name}/generations/{number}": {"get": _op(
            "One generation", "the generation", "Generation",
            params=[NAME, _param("number", "path", {"type": "integer", "minimum": 1}, "generation number")])},
        "/profiles/{name}/diff": {"get": _op(
            "What changed between two generations", "the difference", "Diff",
            params=[NAME, _param("old", "query", {"type": "integer", "minimum": 1}, "older generation", True),
                    _param("new", "query", {"type": "integer", "minimum": 1}, "newer generation", True)])},
        "/profiles/{name}/rollback": {"post": _op(
            "A new generation with the layers of an older one (new, higher serial)", "the new generation",
            "Generation", status="201", params=[NAME],
            body=_body(record({"generation": {"type": "integer", "minimum": 1}}), "the generation to go back to"))},
        "/profiles/{name}/cherry-pick": {"post": _op(
            "Stack a layer of another profile on this one (new generation)", "the new generation", "Generation",
            status="201", params=[NAME],
            body=_body(record({"from": STR, "layer": STR}), "source profile and layer digest (or prefix)"))},
        "/layers": {"get": _op("Every layer with the profiles that use it", "the layers", "LayerList",
                               errors=("401", "403"))},
        "/layers/{ref}": {"get": _op("One layer", "the layer", "Layer",
                                     params=[_param("ref", "path", STR, "digest or unique prefix (6+ hex)")])},
        "/uploads": {"get": _op("Uploads, newest first", "the uploads", "UploadList", params=[_param(
            "state", "query", {"enum": ["receiving", "received", "baking", "retry", "baked", "failed", "held"]},
            "only uploads in this state (held: baked, waiting for approval)")], errors=("400", "401", "403"))},
        "/uploads/{id}": {"get": _op("One upload", "the upload", "Upload", params=[UPLOAD])},
        "/uploads/{id}/changes": {"get": _op(
            "What the upload adds, changes and deletes against its profile's current generation", "the changes",
            "UploadChanges", params=[UPLOAD])},
        "/uploads/{id}/approve": {"post": _op("Append a held upload's layer to its profile (new generation)",
                                              "the upload", "Upload", params=[UPLOAD])},
        "/uploads/{id}/reject": {"post": _op("Drop a held or queued upload", "the upload", "Upload",
                                             params=[UPLOAD])},
        "/incidents": {"get": _op("Open and paused incidents (all=1: closed ones too)", "the incidents",
                                  "IncidentList", params=[_param("all", "query", {"enum": ["0", "1", "true"]},
                                                                 "include closed incidents")],
                                  errors=("401", "403"))},
        "/incidents/{id}": {"get": _op("One incident with its history", "the incident", "IncidentDetail",
                                       params=[INCIDENT])},
        **{f"/incidents/{{id}}/{action}": {"post": _op(f"{action.capitalize()} an incident", "the incident",
                                                       "Incident", params=[INCIDENT])}
           for action in ("pause", "resume", "close")},
        "/base-imports": {
            "get": _op("Base import jobs, the ISO and OCI images offered, the importers available", "the imports",
                       "BaseImports", errors=("401", "403")),
            "post": _op("Start a base import in the background (kind iso: iso; debootstrap: suite, include; "
                        "oci: image, ref, where import-oci is installed)", "the job", "Job", status="202",
                        body=_body(record({"kind": {"enum": ["iso", "debootstrap", "oci"]}}, iso=STR, suite=STR,
                                          include=array(STR), image=STR, ref=STR, description=STR), "what to import"),
                        errors=("400", "401", "403"))},
        "/base-imports/{id}": {"get": _op("One import job with its progress", "the job", "Job",
                                          params=[_param("id", "path", STR, "job id")])},
    }


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    schemas = dict(SCHEMAS)
    for name, key, item in (("ProfileList", "profiles", "ProfileSummary"), ("LayerList", "layers", "Layer"),
                            ("UploadList", "uploads", "Upload"), ("IncidentList", "incidents", "Incident")):
        schemas[name] = record({key: array(ref(item))})
    return {
        "openapi": "3.1.0",
        "info": {"title": "layerbootd admin API", "version": f"1 (layerboot {__version__})",
                 "description": "Nodes, profiles, layers, uploads, incidents and base imports of a layerboot "
                                "server. Every route needs an admin: the admin token or an API token as "
                                "'Authorization: Bearer', or a console session cookie (changes then send the "
                                "session's CSRF token as X-CSRF-Token). See docs/console.md."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths(),
        "components": {
            "schemas": schemas,
            "responses": {"Error": {"description": "a one-line error",
                                    "content": {"application/json": {"schema": ref("Error")}}}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the admin token (state/admin.token) or an API token (lbt1....)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "layerboot_session",
                            "description": "a console login; changes also need the X-CSRF-Token header"},
            },
        },
    }
