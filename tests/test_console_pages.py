"""The console's pages and forms on the real layerbootd, read as a browser gets them: what each page shows, the
login, CSRF tokens, notices, security headers, HTTPS with a certificate and behind a proxy, q-values."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from console_lab import ADMIN, PASSWORD, Browser, Lab, make_lab
from layerboot.errors import LayerbootError
from layerboot.ports import free_port
from layerboot.server.api.jobs import oci_available
from layerboot.server.nodes import Event
from layerboot.tools.cli import main
from server_daemon import MAC, OTHER_MAC
from test_base_import import INITRD, KERNEL, ROOTFS, make_iso, needs_iso_tools, squashfs_of


@pytest.fixture
def lab(profiles, make_layer, tmp_path: Path) -> Iterator[Lab]:
    lab = make_lab(profiles, make_layer, tmp_path)
    try:
        yield lab
    finally:
        lab.daemon.stop()


def text_of(html: str) -> str:
    """The page's visible text, one space between words (what a reader sees)."""
    import html as entities
    return " ".join(entities.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html,
                                                                     flags=re.S))).split())


def test_every_page_needs_a_login_and_shows_the_fleet(lab: Lab) -> None:
    lab.daemon.registry().record_event(MAC, Event(stage="switch-root", ok=True, generation=3,
                                                  message="<script>alert(1)</script> & more"))
    anonymous = requests.get(f"{lab.url}/console/nodes?state=failed", allow_redirects=False, timeout=30)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"] == "/console/login?next=/console/nodes?state%3Dfailed"
    wrong = Browser(lab.url).login(ADMIN, "not the password at all")
    assert wrong.status_code == 401 and "wrong admin name or password" in wrong.text
    browser = lab.login()

    home = browser.get("/console/")
    words = text_of(home.text)
    assert "2 nodes" in words and "1 open incident" in words and "3 boots in the last hour (1 failed)" in words
    assert "1 upload to approve" in words and "boot-failing" in words and "sha256 mismatch on layer 1" in words
    for header, value in (("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"),
                          ("X-Content-Type-Options", "nosniff")):
        assert home.headers[header] == value
    assert "script-src 'self'" in home.headers["Content-Security-Policy"]
    assert 'data-refresh="15"' in home.text

    nodes = browser.get("/console/nodes?sort=state")
    rows = re.findall(r'<tr class="(\w+)">\s*<td><a href="/console/nodes/([0-9a-f:]+)">', nodes.text)
    assert rows == [("bad", OTHER_MAC), ("good", MAC)]        # failed (red) first, then booted (green)
    assert "page 1 of 1 (2 nodes)" in text_of(nodes.text)
    assert 'href="?q=&amp;' not in nodes.text and "sort=state&amp;order=desc" in nodes.text

    node = browser.get(f"/console/nodes/{MAC}")
    assert node.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in node.text and "<script>alert" not in node.text
    chart = re.search(r'<svg class="chart".*?</svg>', node.text, flags=re.S).group(0)
    assert chart.count("<rect") == 4 + 4 and "<title>layers: 6.50 s</title>" in chart   # 4 steps + legend
    assert "14 s after power-on" in text_of(node.text) and "No power control configured" in node.text
    assert "boot interface (BOOTIF)" in node.text and "fleet identity" in node.text
    assert browser.get("/console/nodes/52:54:00:00:00:99").status_code == 404
    # a named node: its name in the table, its page by name, its interfaces and configuration as it boots
    cli = ["--config", str(lab.daemon.config)]
    assert main([*cli, "nodes", "set", MAC, "--name", "web1"]) == 0
    assert main([*cli, "nodes", "set", "web1", "--ip", "10.0.0.5/24", "--gateway", "10.0.0.1"]) == 0
    nodes = browser.get("/console/nodes?q=web1")
    assert re.findall(r'<a href="/console/nodes/([\w:]+)">', nodes.text) == [MAC, "web1"]
    named = browser.get("/console/nodes/web1")
    words = text_of(named.text)
    assert named.status_code == 200 and "Node web1" in words and "boot interface (BOOTIF)" not in words
    assert f"{MAC} eth0 10.0.0.5/24 via 10.0.0.1" in words and "profile web from node" in words
    assert "SSH host key ed25519" in words and "not rendered yet" in words

    profiles = text_of(browser.get("/console/profiles").text)
    assert "web 3 3 3" in profiles and "db 3 3 3" in profiles
    profile = browser.get("/console/profiles/web?old=1&new=3")
    words = text_of(profile.text)
    assert f"+ {lab.digests['overlay'][:12]}" in words and f"+ {lab.digests['extra'][:12]} extra config" in words
    assert words.count("Roll back to") == 2 and "current" in words
    assert f'value="db:{lab.digests["db_tools"]}"' in profile.text        # cherry-pick choices
    assert browser.get("/console/profiles/nope").status_code == 404

    layers = text_of(browser.get("/console/layers").text)
    assert f"{lab.digests['extra'][:12]} overlay" in layers and "extra config" in layers
    uploads = browser.get("/console/uploads")
    assert f'id="upload-{lab.upload_id}"' in uploads.text and "Approve" in uploads.text
    upload = text_of(browser.get(f"/console/uploads/{lab.upload_id}").text)
    assert "1 added 1 changed 1 deleted" in upload
    for line in ("+ adds /opt/new/file.txt file", "~ changes /etc/motd file", "− deletes /etc/os-release whiteout"):
        assert line in upload
    incidents = text_of(browser.get(f"/console/incidents?id={lab.incident_id}").text)
    assert "boot-failing" in incidents and "Pause" in incidents and "History of incident" in incidents
    base = text_of(browser.get("/console/base").text)
    assert "No ISO images in" in base and "No imports yet." in base
    assert ("No OCI images in" if oci_available() else "needs layerboot base import-oci") in base
    css = browser.get(re.search(r'href="(/console/static/console.css\?v=\w+)"', home.text).group(1))
    assert css.status_code == 200 and "badge" in css.text


def test_changes_need_the_csrf_token_and_say_what_happened(lab: Lab) -> None:
    browser = lab.login()
    browser.get("/console/uploads")
    refused = browser.post(f"/console/uploads/{lab.upload_id}/approve", {"csrf": "forged"})
    assert "needs the page's CSRF token" in text_of(refused.text)
    assert lab.api("GET", f"/uploads/{lab.upload_id}").json()["held"]
    done = browser.post(f"/console/uploads/{lab.upload_id}/approve")
    assert done.url.endswith("/console/uploads")
    assert f"upload {lab.upload_id} approved: generation 4 of web" in text_of(done.text)
    assert 'class="notice' not in browser.get("/console/uploads").text    # a notice is shown once
    browser.get("/console/profiles/web")
    rolled = browser.post("/console/profiles/web/rollback", {"generation": "2"})
    assert "web: generation 5 (rollback to generation 2)" in text_of(rolled.text)
    again = browser.post("/console/profiles/web/rollback", {"generation": "5"})
    assert "generation 5 is already the current generation of web" in text_of(again.text)
    picked = browser.post("/console/profiles/web/cherry-pick", {"pick": f"db:{lab.digests['db_tools']}"})
    assert "web: generation 6 (add" in text_of(picked.text)
    paused = browser.post(f"/console/incidents/{lab.incident_id}/pause")
    assert f"incident #{lab.incident_id} (boot-failing on {OTHER_MAC}) is paused" in text_of(paused.text)
    started = browser.post("/console/base", {"kind": "iso", "iso": "../../etc/passwd"})
    assert "no ISO image '../../etc/passwd'" in text_of(started.text)
    old_cookie = browser.http.cookies.get("layerboot_session")
    out = browser.post("/console/logout")
    assert out.url.endswith("/console/login") and "Log in to layerboot" in out.text
    replay = requests.get(f"{lab.url}/console/", cookies={"layerboot_session": old_cookie}, allow_redirects=False,
                          timeout=30)
    assert replay.status_code == 302
    log = lab.daemon.log.read_text()
    assert f"console: {ADMIN} approved upload {lab.upload_id}" in log and f"console: {ADMIN} logged out" in log
    assert PASSWORD not in log and old_cookie not in log



@needs_iso_tools
def test_a_base_import_runs_in_the_background_and_the_page_follows_it(lab: Lab, tmp_path: Path) -> None:
    squashfs = squashfs_of(tmp_path, "live", ROOTFS)
    iso = make_iso(tmp_path, "debianlive", {"live/filesystem.squashfs": squashfs,
                                            "live/vmlinuz-6.1.0-99-amd64": KERNEL,
                                            "live/initrd.img-6.1.0-99-amd64": INITRD})
    lab.daemon.paths.imports.mkdir(exist_ok=True)
    iso.rename(lab.daemon.paths.imports / "debian-live.iso")
    browser = lab.login()
    assert 'value="debian-live.iso"' in browser.get("/console/base").text
    started = browser.post("/console/base", {"kind": "iso", "iso": "debian-live.iso", "description": "from the console"})
    notice = re.search(r"base import (\S+) \(iso\) started", text_of(started.text))
    assert started.url.endswith("/console/base") and notice, text_of(started.text)[:1000]
    job_id = notice.group(1)
    deadline = time.monotonic() + 300
    while (job := lab.api("GET", f"/base-imports/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "done" and job["error"] == "" and job["started_by"] == ADMIN, job
    assert job["params"] == {"iso": "debian-live.iso", "description": "from the console"}
    stored = {layer["digest"]: layer for layer in lab.api("GET", "/layers").json()["layers"]}
    assert {stored[job["result"][k]]["kind"] for k in ("base", "kernel", "initrd")} == {"base", "kernel", "initrd"}
    assert stored[job["result"]["base"]]["description"] == "from the console"
    row = re.search(rf'<tr id="job-{job_id}">.*?</tr>', browser.get("/console/base").text, re.S)
    assert row and "done" in text_of(row.group(0)) and job["result"]["base"][:12] in row.group(0)
    log = lab.daemon.log.read_text()
    assert f"job {job_id}: iso import" in log and f"started by {ADMIN}" in log and f"job {job_id} done" in log



@pytest.mark.root
@pytest.mark.skipif(not oci_available(), reason="needs 'layerboot base import-oci' (layerboot.build.oci)")
def test_an_oci_image_offered_for_import_becomes_a_base(store, tmp_path: Path) -> None:
    """The console's OCI choice through import-oci's importer: an OCI layout in console.import_dir."""
    import types

    from layerboot.server.api.jobs import check_params, oci_images, run_import
    from test_oci_import import write_layout
    write_layout(store.paths.imports / "myimage")
    config = types.SimpleNamespace(console_import_dir="")
    assert [image["name"] for image in oci_images(config, store.paths)] == ["myimage"]
    params = check_params("oci", {"image": "myimage", "ref": "v1", "description": "from the console"}, config,
                          store.paths)
    base = store.get(run_import("oci", params, store, config)["base"])
    assert (base.kind, base.description) == ("base", "from the console")
    with pytest.raises(LayerbootError, match="no OCI image '../myimage'"):
        check_params("oci", {"image": "../myimage"}, config, store.paths)


def test_login_limits_and_where_a_login_may_lead(lab: Lab) -> None:
    outsider = Browser(lab.url)
    for _ in range(5):
        assert outsider.login(ADMIN, "guessing again and again").status_code == 401
    blocked = outsider.login(ADMIN, PASSWORD)
    assert blocked.status_code == 429 and "too many failed logins" in blocked.text
    assert 800 < int(blocked.headers["Retry-After"]) <= 901
    page = requests.get(f"{lab.url}/console/login", timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    stale = requests.post(f"{lab.url}/console/login", data={"csrf": token, "name": ADMIN, "password": PASSWORD},
                          timeout=30)
    assert stale.status_code == 403 and "the login form expired" in stale.text   # no login cookie: cross-site
    from layerboot.server.auth.admins import Admins
    Admins(lab.daemon.registry().db).add("bob", PASSWORD)
    browser = Browser(lab.url)
    for target, lands in (("//evil.example/x", "/console/"), ("https://evil.example/", "/console/"),
                          ("/console/layers", "/console/layers")):
        browser.http.cookies.clear()
        reply = browser.login("bob", PASSWORD, next_path=target)
        assert reply.url == lab.url + lands


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_https_with_a_certificate_and_behind_a_proxy(profiles, make_layer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    lab = make_lab(profiles, make_layer, tmp_path, tls_cert=str(cert), tls_key=str(key), tls_port=port,
                   trusted_proxies=["127.0.0.2"])
    try:
        plain = requests.get(f"{lab.url}/console/nodes?x=1", allow_redirects=False, timeout=30)
        assert plain.status_code == 302 and plain.headers["Location"] == f"https://127.0.0.1:{port}/console/nodes?x=1"
        secure = Browser(f"https://127.0.0.1:{port}")
        secure.http.verify, secure.http.trust_env = str(cert), False   # (REQUESTS_CA_BUNDLE would win)
        secure.login(ADMIN, PASSWORD)
        cookie = next(c for c in secure.http.cookies if c.name == "layerboot_session")
        assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")
        assert "Dashboard" in secure.get("/console/").text
        api = requests.get(f"https://127.0.0.1:{port}/api/v1/nodes", verify=str(cert), timeout=30,
                           headers={"Authorization": f"Bearer {lab.api_token}"})
        assert api.status_code == 200 and api.json()["total"] == 2
        assert lab.api("GET", "/status").status_code == 200          # scripts may still use plain HTTP
        # nginx on 127.0.0.2 terminating TLS: believed; the same headers from anyone else: not
        proxied = requests.Session()
        proxied.mount("http://", _SourceAdapter("127.0.0.2"))
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7, 127.0.0.2"}
        form = proxied.get(f"{lab.url}/console/login", headers=headers, allow_redirects=False, timeout=30)
        assert form.status_code == 200 and "Secure" in form.headers["Set-Cookie"]   # the browser sees https
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        login_cookie = {"layerboot_login": form.cookies["layerboot_login"]}
        reply = proxied.post(f"{lab.url}/console/login", headers=headers, allow_redirects=False, timeout=30,
                             data={"csrf": token, "name": ADMIN, "password": "wrong wrong wrong"}, cookies=login_cookie)
        assert reply.status_code == 401
        reply = proxied.post(f"{lab.url}/console/login", headers=headers, allow_redirects=False, timeout=30,
                             data={"csrf": token, "name": ADMIN, "password": PASSWORD}, cookies=login_cookie)
        assert reply.status_code == 303 and "; Secure" in reply.headers["Set-Cookie"]
        forged = requests.get(f"{lab.url}/console/login", headers=headers, allow_redirects=False, timeout=30)
        assert forged.status_code == 302                                # not from the proxy: to HTTPS
        time.sleep(0.2)
        assert "login refused for 'alice' from 198.51.100.7" in lab.daemon.log.read_text()
    finally:
        lab.daemon.stop()


class _SourceAdapter(requests.adapters.HTTPAdapter):
    """Connect from another loopback address (127.0.0.2: 'the proxy')."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def test_negotiation_honours_q_values(lab: Lab) -> None:
    def kind(accept: str, path: str = "/status") -> str:
        reply = requests.get(lab.url + path, headers={"Accept": accept}, allow_redirects=False, timeout=30)
        return reply.headers.get("Location") or reply.headers["Content-Type"].split(";")[0]

    assert kind("text/html;q=0.2, application/json") == "application/json"
    assert kind("application/json;q=0.1, text/html") == "text/html"
    assert kind("*/*") == "text/plain" and kind("") == "text/plain"
    assert kind("application/json;q=0, text/*;q=0.5") == "text/plain"
    assert kind("image/png") == "text/plain" and kind("text/html;;q=x==") in ("text/html", "text/plain")
    assert kind("text/html,application/xhtml+xml,*/*;q=0.8", "/") == "/console/"
    assert kind("text/html", "/api/v1/nodes") == "application/json"       # the API answers JSON, errors too
