"""/api/v1 on the real layerbootd, on SQLite and PostgreSQL: every route's real answers validated against the
OpenAPI document it serves (openapi-core), the credentials it takes, the CLI's --json giving the same records,
and the nodes table's server-side sort, filter and paging."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from console_lab import ADMIN, Lab, make_lab
from layerboot.server.api.jobs import oci_available
from layerboot.server.api.openapi import document
from layerboot.tools.cli import main
from server_daemon import MAC, OTHER_MAC


@pytest.fixture
def lab(profiles, make_layer, tmp_path: Path, database_url: str) -> Iterator[Lab]:
    lab = make_lab(profiles, make_layer, tmp_path, database=database_url if "postgresql" in database_url else "")
    try:
        yield lab
    finally:
        lab.daemon.stop()


class Checked:
    """Every answer is validated against the served OpenAPI document; routes seen are counted."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        served = requests.get(f"{lab.url}/api/v1/openapi.json", timeout=30)
        assert served.status_code == 200 and served.json() == json.loads(json.dumps(document()))
        spec = served.json()
        spec["servers"] = [{"url": f"{lab.url}/api/v1"}]
        self.openapi = OpenAPI.from_dict(spec)
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, method: str, path: str, status: int, **kwargs) -> requests.Response:  # noqa: ANN003
        reply = self.lab.api(method, path, **kwargs)
        assert reply.status_code == status, (method, path, reply.status_code, reply.text[:500])
        request = RequestsOpenAPIRequest(reply.request)
        if status < 400:           # (the refused ones include requests the document calls invalid too)
            self.openapi.validate_request(request)
        self.openapi.validate_response(request, RequestsOpenAPIResponse(reply))
        template = next(p for p in document()["paths"] if _matches(p, path.split("?")[0]))
        self.seen.add((method.lower(), template))
        return reply


def _matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), path) is not None


def test_every_route_answers_as_its_openapi_document_says(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    check = Checked(lab)
    web, store = lab.digests, lab.daemon.paths.root
    assert check("GET", "/status", 200).json()["service"] == "layerbootd"
    dash = check("GET", "/dashboard", 200).json()
    assert dash["nodes"] == 2 and dash["states"]["failed"] == 1 and dash["boots_last_hour"]["events"] == 2
    assert [i["mac"] for i in dash["incidents"]] == [OTHER_MAC]

    nodes = check("GET", "/nodes?sort=state&order=asc", 200).json()
    assert [n["mac"] for n in nodes["nodes"]] == [OTHER_MAC, MAC] and nodes["total"] == 2
    node = check("GET", f"/nodes/{MAC}", 200).json()
    assert node["events"][0]["timings"]["layers"] == 6.5 and node["profile"] == "web"
    # the CLI's --json gives the same records
    assert main(["--config", str(lab.daemon.config), "nodes", "show", MAC, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in shown.items() if k != "heartbeat_age"} == \
        {k: v for k, v in node.items() if k != "heartbeat_age"}
    assert main(["--config", str(lab.daemon.config), "nodes", "list", "--json"]) == 0
    assert [n["mac"] for n in json.loads(capsys.readouterr().out)["nodes"]] == sorted([MAC, OTHER_MAC])
    # a named node's record carries its fleet identity (name, cluster, groups, interfaces, what it boots with)
    cli = ["--config", str(lab.daemon.config)]
    assert main([*cli, "clusters", "add", "c1"]) == 0 and main([*cli, "groups", "add", "edge"]) == 0
    assert main([*cli, "nodes", "set", MAC, "--name", "web1"]) == 0
    assert main([*cli, "nodes", "set", "web1", "--cluster", "c1", "--add-group", "edge", "--ip", "10.0.0.5/24"]) == 0
    capsys.readouterr()
    named = check("GET", "/nodes/web1", 200).json()
    assert (named["mac"], named["name"], named["cluster"], named["groups"]) == (MAC, "web1", "c1", ["edge"])
    assert named["interfaces"] == [{"device": "eth0", "mac": MAC, "ipv4": "10.0.0.5/24"}]
    assert named["fleet"]["sources"]["profile"] == "node" and named["fleet"]["host_keys"][0]["fingerprint"]
    assert named["events"] == node["events"] and check("GET", f"/nodes/{MAC}", 200).json()["name"] == "web1"
    assert [n["name"] for n in check("GET", "/nodes?q=web", 200).json()["nodes"]] == ["web1"]
    assert [n["name"] for n in check("GET", "/nodes?sort=name", 200).json()["nodes"]] == ["web1", None]
    assert main([*cli, "nodes", "show", "web1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in shown.items() if k != "heartbeat_age"} == \
        {k: v for k, v in named.items() if k != "heartbeat_age"}
    assert main([*cli, "nodes", "list", "--cluster", "c1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["nodes"]
    assert [(n["name"], n["groups"], n["interfaces"]) for n in listed] == [("web1", ["edge"], named["interfaces"])]
    check("GET", "/nodes/52:54:00:00:00:99", 404)
    check("GET", "/nodes?sort=bogus", 400)
    assert "no power control" in check("POST", f"/nodes/{MAC}/power", 404, json={"action": "status"}).json()["error"]

    profiles = check("GET", "/profiles", 200).json()["profiles"]
    assert {p["name"]: p["current"]["number"] for p in profiles} == {"web": 3, "db": 3}
    detail = check("GET", "/profiles/web", 200).json()
    assert [g["number"] for g in detail["generations"]] == [3, 2, 1] and detail["chain"][0]["kind"] == "base"
    assert check("GET", "/profiles/web/generations/2", 200).json()["layers"] == [web["base"], web["overlay"]]
    diff = check("GET", "/profiles/web/diff?old=1&new=3", 200).json()
    assert diff["added"] == [web["overlay"], web["extra"]] and not diff["empty"]
    check("GET", "/profiles/web/diff?old=1&new=x", 400)
    check("GET", "/profiles/nope", 404)
    assert main(["--store", str(store), "profile", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profiles"] == profiles

    layers = check("GET", "/layers", 200).json()["layers"]
    by_digest = {layer["digest"]: layer for layer in layers}
    assert by_digest[web["extra"]]["used_by"] == ["web"] and by_digest[web["base"]]["kind"] == "base"
    assert check("GET", f"/layers/{web['extra'][:10]}", 200).json()["description"] == "extra config"
    assert main(["--store", str(store), "layer", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == layers

    uploads = check("GET", "/uploads?state=held", 200).json()["uploads"]
    assert [u["id"] for u in uploads] == [lab.upload_id] and "path" not in uploads[0]
    check("GET", f"/uploads/{lab.upload_id}", 200)
    changes = check("GET", f"/uploads/{lab.upload_id}/changes", 200).json()
    assert {c["path"]: c["action"] for c in changes["changes"]} == {
        "etc/motd": "change", "opt/new/file.txt": "add", "etc/os-release": "delete"}
    approved = check("POST", f"/uploads/{lab.upload_id}/approve", 200).json()
    assert approved["generation"] == 4 and not approved["held"]
    assert "or held for approval can be rejected" in check("POST", f"/uploads/{lab.upload_id}/reject", 400).json()["error"]
    check("GET", "/uploads/nope", 404)

    rolled = check("POST", "/profiles/web/rollback", 201, json={"generation": 2}).json()
    assert rolled["number"] == 5 and rolled["layers"] == [web["base"], web["overlay"]] and rolled["serial"] > 4
    picked = check("POST", "/profiles/web/cherry-pick", 201, json={"from": "db", "layer": web["db_tools"]})
    assert picked.status_code == 201
    assert "is already in web" in check("POST", "/profiles/web/cherry-pick", 400,
                                        json={"from": "db", "layer": web["db_tools"]}).json()["error"]

    incidents = check("GET", "/incidents", 200).json()["incidents"]
    assert [i["id"] for i in incidents] == [lab.incident_id]
    assert check("POST", f"/incidents/{lab.incident_id}/pause", 200).json()["state"] == "paused"
    assert check("POST", f"/incidents/{lab.incident_id}/resume", 200).json()["state"] == "open"
    assert check("POST", f"/incidents/{lab.incident_id}/close", 200).json()["state"] == "closed"
    shown = check("GET", f"/incidents/{lab.incident_id}", 200).json()
    assert [h["kind"] for h in shown["history"]][-3:] == ["paused", "resumed", "closed"]
    check("GET", "/incidents?all=1", 200)
    check("POST", f"/incidents/{lab.incident_id}/close", 400)

    imports = check("GET", "/base-imports", 200).json()
    assert imports["kinds"] == {"iso": True, "debootstrap": True, "oci": oci_available()} and imports["isos"] == []
    assert "no ISO image" in check("POST", "/base-imports", 400, json={"kind": "iso", "iso": "x.iso"}).json()["error"]
    oci_refused = check("POST", "/base-imports", 400, json={"kind": "oci", "image": "a/b"}).json()["error"]
    assert ("no OCI image 'a/b'" if oci_available() else "needs 'layerboot base import-oci'") in oci_refused
    offered = lab.daemon.paths.imports                 # what console.import_dir holds is offered, nothing else
    (offered / "layout" / "blobs" / "sha256").mkdir(parents=True)
    (offered / "layout" / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (offered / "layout" / "blobs" / "sha256" / "ab").write_bytes(b"x" * 1000)
    (offered / "debian12.tar").write_bytes(b"t" * 2048)
    (offered / "live.iso").write_bytes(b"i" * 4096)
    (offered / "notes.txt").write_text("not an image")
    (offered / "plain-dir").mkdir()
    imports = check("GET", "/base-imports", 200).json()
    assert imports["isos"] == [{"name": "live.iso", "size": 4096}]
    assert imports["oci_images"] == [{"name": "debian12.tar", "size": 2048}, {"name": "layout", "size": 1000}]
    check("GET", "/base-imports/nope", 404)

    # every route of the application under /api/v1 is documented, and every documented one was called
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    routed = {(r.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", r.resource.canonical.removeprefix("/api/v1")))
              for r in _app_routes(lab) if r.resource.canonical.startswith("/api/v1/") and r.method != "HEAD"}
    routed = {(m, p) for m, p in routed if p != "/openapi.json"}
    expanded = set()
    for method, path in routed:
        if "{action}" in path:
            expanded |= {(method, path.replace("{action}", a)) for a in ("approve", "reject", "pause", "resume",
                                                                        "close") if (method, path.replace(
                                                                            "{action}", a)) in documented}
        else:
            expanded.add((method, path))
    assert expanded == documented
    assert documented <= check.seen


def _app_routes(lab: Lab) -> list:  # noqa: ANN202
    """The routes layerbootd registers (its build_app, with the config it runs with)."""
    from layerboot.server.http import ServerState, build_app
    from layerboot.settings import load_config
    state = ServerState.__new__(ServerState)
    state.config = load_config(lab.daemon.config)
    return list(build_app(state, client_max_size=1 << 20).router.routes())


def test_credentials_of_the_api(lab: Lab) -> None:
    """Admin token and API tokens open it; node credentials, no credential and a revoked token do not; a
    console session needs its CSRF token for changes."""
    assert lab.api("GET", "/nodes", token=lab.admin_token).status_code == 200
    assert lab.api("GET", "/nodes", token=lab.node_secret).status_code == 403
    boot = lab.daemon.boot_token()
    assert lab.api("GET", "/nodes", token=boot).status_code == 403
    bare = requests.get(f"{lab.url}/api/v1/nodes", timeout=30)
    assert bare.status_code == 401 and bare.json()["status"] == 401 and "Bearer" in bare.json()["error"]
    token_id = lab.api_token.split(".")[1]
    assert main(["--config", str(lab.daemon.config), "admin", "token", "revoke", token_id]) == 0
    gone = lab.api("GET", "/nodes")
    assert gone.status_code == 401 and gone.json()["error"] == "unknown or revoked API token"
    # an API token also opens the admin's other routes, as the admin token does
    assert lab.api("GET", "/status", token=lab.admin_token).status_code == 200
    browser = lab.login()
    assert browser.http.get(f"{lab.url}/api/v1/nodes", timeout=30).json()["total"] == 2
    refused = browser.http.post(f"{lab.url}/api/v1/incidents/{lab.incident_id}/pause", timeout=30)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    done = browser.http.post(f"{lab.url}/api/v1/incidents/{lab.incident_id}/pause", timeout=30,
                             headers={"X-CSRF-Token": browser.csrf})
    assert done.status_code == 200 and done.json()["state"] == "paused"
    log = lab.daemon.log.read_text()
    assert f"console: {ADMIN}: incident #{lab.incident_id}" in log and lab.api_token not in log


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_nodes_table_sorts_filters_and_pages_on_the_server(profiles, make_layer, tmp_path: Path,
                                                           database_url: str) -> None:
    lab = make_lab(profiles, make_layer, tmp_path, nodes=1000)
    try:
        first = lab.api("GET", "/nodes?per_page=100").json()
        assert first["total"] == 1002 and first["pages"] == 11 and len(first["nodes"]) == 100
        assert [n["mac"] for n in first["nodes"]][:2] == ["02:00:00:00:00:00", "02:00:00:00:00:01"]
        last = lab.api("GET", "/nodes?per_page=100&page=11").json()
        assert [n["mac"] for n in last["nodes"]] == [MAC, OTHER_MAC]
        desc = lab.api("GET", "/nodes?sort=mac&order=desc&per_page=3").json()
        assert [n["mac"] for n in desc["nodes"]] == [OTHER_MAC, MAC, "02:00:00:00:03:e7"]
        db_nodes = lab.api("GET", "/nodes?profile=db&per_page=1000").json()
        assert db_nodes["total"] == 335 and {n["profile"] for n in db_nodes["nodes"]} == {"db"}
        failed = lab.api("GET", "/nodes?state=failed").json()
        assert [n["mac"] for n in failed["nodes"]] == [OTHER_MAC] and failed["counts"]["unknown"] == 1000
        search = lab.api("GET", "/nodes?q=00:03:e").json()
        assert search["total"] == 8
        booted = lab.api("GET", "/nodes?sort=last_seen&order=desc&per_page=2").json()
        assert {n["mac"] for n in booted["nodes"]} == {MAC, OTHER_MAC}   # never-seen nodes sort last
        assert lab.api("GET", "/nodes?per_page=5000").status_code == 400
    finally:
        lab.daemon.stop()
