"""layerbootd over real HTTP on loopback: iPXE scripts, manifests, objects, tokens, negotiation, reports."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.overlays.keys import load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.overlays.profile import Profiles
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, write_config


@pytest.fixture
def setup(profiles: Profiles, make_layer, tmp_path: Path) -> dict[str, str]:
    digests = boot_profile(profiles, make_layer, tmp_path, "p1")
    other = boot_profile(profiles, make_layer, tmp_path, "p2")
    digests.update({f"p2_{k}": v for k, v in other.items()})
    return digests


def _daemon(profiles: Profiles, tmp_path: Path, **server: object) -> Iterator[Daemon]:
    paths = profiles.paths
    config = write_config(tmp_path / "layerboot.toml", paths, **server)
    daemon = Daemon(paths, config, tmp_path / "layerbootd.log")
    registry = daemon.registry()
    _, token = registry.register(MAC, "p1", replace=True)
    registry.register(OTHER_MAC, "p2", replace=True)
    daemon.node_token = token  # type: ignore[attr-defined]
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def daemon(profiles: Profiles, setup: dict[str, str], tmp_path: Path) -> Iterator[Daemon]:
    yield from _daemon(profiles, tmp_path)


def test_ipxe_script_names_kernel_initrd_cmdline_and_a_working_token(daemon: Daemon, setup: dict[str, str]) -> None:
    reply = daemon.get("/boot/52-54-00-12-34-56.ipxe", headers={"User-Agent": "iPXE/1.21.1"})
    assert reply.status == 200
    lines = reply.text.splitlines()
    assert lines[0] == "#!ipxe"
    script = daemon.get(f"/boot/{MAC.upper()}.ipxe").text
    token = script.split("layerboot.token=")[1].split()[0]
    base = daemon.url
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    # BOOTIF: iPXE expands it to the MAC of the NIC it booted from (01-52-54-...), stage1 configures that NIC.
    assert kernel == (f"kernel {base}/objects/{setup['kernel']}?token={token} initrd=initrd console=ttyS0 quiet "
                      "BOOTIF=01-${netX/mac:hexhyp} "
                      f"layerboot.server={base} layerboot.node={MAC} layerboot.profile=p1 layerboot.token={token}")
    assert f"initrd --name initrd {base}/objects/{setup['initrd']}?token={token}" in script.splitlines()
    assert script.rstrip().endswith("boot")
    # the kernel URL works as iPXE would fetch it
    fetched = daemon.get(f"/objects/{setup['kernel']}?token={token}", headers={"User-Agent": "iPXE/1.21.1"})
    assert fetched.status == 200
    assert fetched.body == daemon.paths.object(setup["kernel"]).read_bytes()
    assert daemon.registry().get(MAC).boots == 2


def test_public_url_setting_overrides_the_host(profiles: Profiles, setup: dict[str, str], tmp_path: Path) -> None:
    for daemon in _daemon(profiles, tmp_path, public_url="http://10.0.2.2:8080/"):
        script = daemon.get(f"/boot/{MAC}.ipxe").text
        assert "layerboot.server=http://10.0.2.2:8080 " in script
        assert "kernel http://10.0.2.2:8080/objects/" in script


def test_unknown_mac_refused_or_given_the_default_profile(profiles: Profiles, setup: dict[str, str],
                                                          tmp_path: Path) -> None:
    for daemon in _daemon(profiles, tmp_path):
        reply = daemon.get("/boot/02:00:00:00:00:01.ipxe", headers={"User-Agent": "iPXE/1.21.1"})
        assert reply.status == 200 and reply.text.startswith("#!ipxe\n")
        assert "echo layerboot: node 02:00:00:00:00:01 is not registered" in reply.text
        assert "kernel" not in reply.text and "exit" in reply.text
        assert daemon.get("/boot/02:00:00:00:00:01.ipxe").status == 403
        assert daemon.registry().find("02:00:00:00:00:01") is None
    (tmp_path / "layerbootd.log").unlink()
    for daemon in _daemon(profiles, tmp_path, unknown_mac="default", default_profile="p2"):
        script = daemon.get("/boot/02:00:00:00:00:01.ipxe").text
        assert f"/objects/{setup['p2_kernel']}?token=" in script
        token = script.split("layerboot.token=")[1].split()[0]
        node = daemon.registry().get("02:00:00:00:00:01")
        assert node.auto and node.profile == "p2"
        manifest = daemon.get("/nodes/02:00:00:00:00:01/manifest", token=token)
        assert manifest.status == 200 and b'"profile": "p2"' in json.loads(manifest.body)["payload"].encode()


def test_profile_without_kernel_gets_a_clear_ipxe_error(profiles: Profiles, make_layer, setup: dict[str, str],
                                                        tmp_path: Path) -> None:
    base = make_layer({"a": "b"}, kind="base")
    profiles.create("bare", base)
    for daemon in _daemon(profiles, tmp_path):
        daemon.registry().set_profile(MAC, "bare")
        reply = daemon.get(f"/boot/{MAC}.ipxe", headers={"User-Agent": "iPXE/1.21.1"})
        assert "echo layerboot: profile bare generation 1 has no kernel" in reply.text
        assert "\nkernel " not in reply.text
        # A command line stored before it was checked (set_boot refuses it now): no script, one clear line.
        gen = profiles.current("p1")
        profiles._commit("p1", gen.layers, "legacy", cmdline="console=ttyS0 root=${root}", kernel=gen.kernel,
                         initrd=gen.initrd, expect_number=gen.number)
        daemon.registry().set_profile(MAC, "p1")
        reply = daemon.get(f"/boot/{MAC}.ipxe", headers={"User-Agent": "iPXE/1.21.1"})
        assert "command line of profile p1 is refused: word 'root=" in reply.text
        assert "\nkernel " not in reply.text
        plain = daemon.get(f"/boot/{MAC}.ipxe")
        assert plain.status == 409 and "word 'root=${root}' contains '${'" in plain.text


def test_manifest_is_the_signed_envelope_for_the_node_only(daemon: Daemon, profiles: Profiles) -> None:
    token = daemon.boot_token()
    reply = daemon.get(f"/nodes/{MAC}/manifest", token=token)
    assert reply.status == 200
    assert reply.body == profiles.signed_manifest("p1")
    manifest = verify_manifest(reply.body, load_public_key(daemon.paths.public_key))
    assert manifest.profile == "p1" and manifest.generation == 2
    # the node secret from registration works too
    assert daemon.get(f"/nodes/{MAC}/manifest", token=daemon.node_token).body == reply.body  # type: ignore[attr-defined]
    # wrong, missing, another node's MAC
    assert daemon.get(f"/nodes/{MAC}/manifest", token="0" * 48).status == 401
    missing = daemon.get(f"/nodes/{MAC}/manifest", headers={"Accept": "application/json"})
    assert missing.status == 401 and "Bearer" in missing.json()["error"]
    other = daemon.get(f"/nodes/{OTHER_MAC}/manifest", token=token, headers={"Accept": "application/json"})
    assert other.status == 403 and "another node" in other.json()["error"]
    assert daemon.get(f"/nodes/{MAC}/manifest", headers={"Authorization": "Basic eDp5"}).status == 401


def test_new_generation_is_served_and_old_objects_stay_fetchable(daemon: Daemon, profiles: Profiles,
                                                                 make_layer, setup: dict[str, str]) -> None:
    token = daemon.boot_token()
    extra = make_layer({"etc/extra": "x"}, base=setup["base"])
    profiles.add("p1", extra)
    profiles.remove("p1", setup["overlay"])
    assert verify_manifest(daemon.get(f"/nodes/{MAC}/manifest", token=token).body,
                           load_public_key(daemon.paths.public_key)).generation == 4
    for digest in (extra, setup["overlay"]):
        assert daemon.get(f"/objects/{digest}", token=token).status == 200


def test_objects_only_those_the_profile_names(daemon: Daemon, setup: dict[str, str]) -> None:
    token = daemon.boot_token()
    for key in ("base", "overlay", "kernel", "initrd"):
        reply = daemon.get(f"/objects/{setup[key]}", token=token)
        assert reply.status == 200, key
        assert reply.body == daemon.paths.object(setup[key]).read_bytes()
    denied = daemon.get(f"/objects/{setup['p2_overlay']}", token=token, headers={"Accept": "application/json"})
    assert denied.status == 403 and "not named by any manifest of profile p1" in denied.json()["error"]
    assert daemon.get(f"/objects/{setup['base']}").status == 401
    assert daemon.get(f"/objects/{setup['base']}?token=nope").status == 401
    admin = (daemon.paths.state / "admin.token").read_text().strip()
    assert daemon.get(f"/objects/{setup['p2_overlay']}", token=admin).status == 200


def test_object_headers_range_and_conditional_requests(daemon: Daemon, setup: dict[str, str]) -> None:
    token = daemon.boot_token()
    digest = setup["kernel"]
    data = daemon.paths.object(digest).read_bytes()
    full = daemon.get(f"/objects/{digest}", token=token)
    assert full.headers["etag"] == f'"{digest}"'
    assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert int(full.headers["content-length"]) == len(data)
    assert full.headers["accept-ranges"] == "bytes"
    part = daemon.get(f"/objects/{digest}", token=token, headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and part.body == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = daemon.get(f"/objects/{digest}", token=token, headers={"Range": "bytes=-10"})
    assert tail.status == 206 and tail.body == data[-10:]
    resume = daemon.get(f"/objects/{digest}", token=token, headers={"Range": f"bytes={len(data) - 5}-"})
    assert resume.status == 206 and resume.body == data[-5:]
    beyond = daemon.get(f"/objects/{digest}", token=token, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert daemon.get(f"/objects/{digest}", token=token, headers={"Range": "bytes=0-1,5-9"}).status == 416
    assert daemon.get(f"/objects/{digest}", token=token, headers={"If-None-Match": f'"{digest}"'}).status == 304
    # one keep-alive connection: whole object, then a range, then the manifest (stage1 reuses connections)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    auth = {"Authorization": f"Bearer {token}"}
    for headers, expected in (({}, data), ({"Range": "bytes=5-9"}, data[5:10]), ({}, data)):
        conn.request("GET", f"/objects/{digest}", headers={**auth, **headers})
        assert conn.getresponse().read() == expected
    conn.request("GET", f"/nodes/{MAC}/manifest", headers=auth)
    assert conn.getresponse().status == 200
    conn.close()
    head = daemon.request("HEAD", f"/objects/{digest}", token=token)
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) == len(data)


@pytest.mark.parametrize("path", ["/objects/abc", "/objects/" + "A" * 64, "/objects/..%2F..%2Fkeys%2Fsigning.key",
                                  "/nodes/not-a-mac/manifest", "/boot/52:54:00:12:34.ipxe"])
def test_malformed_requests_are_one_line_errors(daemon: Daemon, path: str) -> None:
    reply = daemon.get(path, token=daemon.boot_token())
    assert reply.status in (400, 404)
    assert reply.text.startswith("layerboot: error: ")
    assert "Traceback" not in reply.text and "signing" not in reply.text.lower().split("error:")[0]


def test_profile_manifest_for_admin_and_nodes_of_that_profile(daemon: Daemon, profiles: Profiles) -> None:
    admin = (daemon.paths.state / "admin.token").read_text().strip()
    assert daemon.get("/profiles/p2/manifest", token=admin).body == profiles.signed_manifest("p2")
    token = daemon.boot_token()
    assert daemon.get("/profiles/p1/manifest", token=token).status == 200
    assert daemon.get("/profiles/p2/manifest", token=token).status == 403
    assert daemon.get("/profiles/p2/manifest").status == 401


def test_node_list_for_the_admin_only(daemon: Daemon) -> None:
    admin = (daemon.paths.state / "admin.token").read_text().strip()
    listing = daemon.get("/nodes", token=admin, headers={"Accept": "application/json"}).json()
    assert sorted(n["mac"] for n in listing["nodes"]) == sorted([MAC, OTHER_MAC])
    assert "<td>52:54:00:12:34:56</td>" in daemon.get("/nodes", token=admin, headers={"Accept": "text/html"}).text
    assert daemon.get("/nodes", token=daemon.boot_token()).status == 403
    assert daemon.get("/nodes", token=daemon.node_token).status == 403  # type: ignore[attr-defined]
    assert daemon.get("/nodes").status == 401


def test_what_does_not_exist_is_404_and_a_bad_request_400(daemon: Daemon) -> None:
    admin = (daemon.paths.state / "admin.token").read_text().strip()
    json_accept = {"Accept": "application/json"}
    profile = daemon.get("/profiles/ghost/manifest", token=admin, headers=json_accept)
    assert profile.status == 404 and profile.json()["error"] == "no profile named 'ghost'"
    upload = daemon.get(f"/nodes/{MAC}/uploads/nosuchupload", token=admin, headers=json_accept)
    assert upload.status == 404 and upload.json()["error"] == "no upload 'nosuchupload'"
    assert daemon.get("/objects/" + "0" * 64, token=admin).status == 404
    assert daemon.get("/objects/not-a-digest", token=admin).status == 400


def test_negotiation_on_status_and_errors(daemon: Daemon) -> None:
    assert daemon.get("/status", headers={"Accept": "application/json"}).json()["service"] == "layerbootd"
    html = daemon.get("/status", headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.headers["content-type"].startswith("text/html") and "<h1>layerbootd is running</h1>" in html.text
    ipxe = daemon.get("/status", headers={"User-Agent": "iPXE/1.21.1"})
    assert ipxe.text.startswith("#!ipxe\necho layerbootd is running")
    plain = daemon.get("/status")
    assert plain.headers["content-type"].startswith("text/plain") and plain.text.startswith("layerbootd is running")
    missing = daemon.get("/nowhere", headers={"Accept": "application/json"})
    assert missing.status == 404 and missing.json()["status"] == 404
    err_html = daemon.get(f"/nodes/{MAC}", headers={"Accept": "text/html"})
    assert err_html.status == 401 and "<h1>layerboot: the node&#x27;s status needs a credential" in err_html.text
    err_ipxe = daemon.get(f"/nodes/{MAC}", headers={"User-Agent": "iPXE/1.21.1"})
    assert err_ipxe.status == 200 and err_ipxe.text.startswith("#!ipxe\necho layerboot: the node's status needs")


def test_boot_events_are_recorded_and_shown(daemon: Daemon) -> None:
    token = daemon.boot_token()
    event = {"stage": "manifest", "ok": True, "generation": 2, "serial": 2, "elapsed": 1.25, "message": ""}
    reply = daemon.request("POST", f"/nodes/{MAC}/events", token=token, body=json.dumps(event).encode(),
                           headers={"Content-Type": "application/json"})
    assert reply.status == 201
    failure = {"stage": "Layers", "ok": False, "generation": 2, "serial": 2, "elapsed": 3.5,
               "message": "sha256 mismatch on layer 1", "timings": {"network": 0.8, "manifest": 0.1},
               "profile": "p1", "stage1_started": 1.5}
    daemon.request("POST", f"/nodes/{MAC}/events", token=token, body=json.dumps(failure).encode())
    status = daemon.get(f"/nodes/{MAC}", token=daemon.node_token,  # type: ignore[attr-defined]
                        headers={"Accept": "application/json"}).json()
    assert status["last_generation"] == 2 and status["failures"] == 1 and status["last_stage"] == "layers"
    assert [e["stage"] for e in status["events"]] == ["manifest", "layers"]
    assert status["events"][1]["timings"] == {"network": 0.8, "manifest": 0.1}
    assert status["events"][1]["message"] == "sha256 mismatch on layer 1"
    bad = daemon.request("POST", f"/nodes/{MAC}/events", token=token, body=b'{"stage": "x", "ok": "yes"}')
    assert bad.status == 400 and "'ok' must be true or false" in bad.text
    assert daemon.request("POST", f"/nodes/{MAC}/events", token=token, body=b"not json").status == 400
    other = daemon.request("POST", f"/nodes/{OTHER_MAC}/events", token=token, body=json.dumps(event).encode())
    assert other.status == 403


def test_client_dropping_a_download_midway_leaves_the_daemon_serving(daemon: Daemon, profiles: Profiles,
                                                                     tmp_path: Path) -> None:
    big = tmp_path / "big-kernel"
    big.write_bytes(os.urandom(40_000_000))
    digest = profiles.store.import_boot_file(big, kind="kernel").digest
    profiles.set_boot("p1", kernel=digest)
    token = daemon.boot_token()
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.sendall(f"GET /objects/{digest}?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.close()
    whole = daemon.get(f"/objects/{digest}", token=token)
    assert whole.status == 200 and len(whole.body) == 40_000_000
    assert "internal error" not in daemon.log.read_text()
