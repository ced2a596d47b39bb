"""A store and a running layerbootd with something to show in the console and the API: two profiles with a few
generations, registered nodes with boot reports, a held upload (baked, waiting for approval), an open incident,
an admin account with an API token; plus a logged-in HTTP session (requests) that handles the CSRF token."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from layerboot.overlays.profile import Profiles
from layerboot.server.auth.admins import Admins
from layerboot.server.monitor.config import DEFAULT_TYPES
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.nodes import Event
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, layer_upload, write_config

ADMIN, PASSWORD = "alice", "correct horse battery"


@dataclass
class Lab:
    daemon: Daemon
    profiles: Profiles
    digests: dict[str, str]
    node_secret: str
    api_token: str
    admin_token: str
    upload_id: str = ""
    incident_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.daemon.url

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"Bearer {token or self.api_token}"
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=60, **kwargs)

    def login(self, name: str = ADMIN, password: str = PASSWORD) -> "Browser":
        browser = Browser(self.url)
        reply = browser.login(name, password)
        assert reply.status_code == 200 and "Dashboard" in reply.text, reply.text[:2000]
        return browser


class Browser:
    """What a browser does with the console: cookies, forms with the page's CSRF token, redirects."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        reply = self.http.get(self.url + path, timeout=60, **kwargs)
        found = re.search(r'name="csrf" value="([^"]+)"', reply.text)
        if found and "/login" not in reply.url:
            self.csrf = found.group(1)
        return reply

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True, **kwargs: Any
             ) -> requests.Response:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        return self.http.post(self.url + path, data=form, timeout=120, **kwargs)

    def login(self, name: str, password: str, *, next_path: str = "/console/") -> requests.Response:
        page = self.http.get(f"{self.url}/console/login", timeout=30)
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        reply = self.http.post(f"{self.url}/console/login", timeout=60,
                               data={"csrf": token, "name": name, "password": password, "next": next_path})
        found = re.search(r'name="csrf" value="([^"]+)"', reply.text)
        if found and reply.status_code == 200 and "/login" not in reply.url:
            self.csrf = found.group(1)
        return reply


def make_lab(profiles: Profiles, make_layer: Any, tmp_path: Path, *, database: str = "", nodes: int = 0,
             **server: Any) -> Lab:
    """Build the store and start layerbootd (the caller stops ``lab.daemon``)."""
    digests = boot_profile(profiles, make_layer, tmp_path, "web")
    other = boot_profile(profiles, make_layer, tmp_path, "db")
    extra = make_layer({"etc/extra.conf": "extra\n"}, base=digests["base"], description="extra config")
    profiles.add("web", extra)
    digests.update(extra=extra, db_overlay=other["overlay"])
    # made on web's base (db's base may differ by its files' times): web can cherry-pick it from db
    tools = make_layer({"usr/local/bin/tool": "#!/bin/sh\n"}, base=digests["base"], description="db tools")
    profiles.add("db", tools, force=True)
    digests["db_tools"] = tools
    if database:
        server["database"] = database
    server.setdefault("upload_policy", "hold")
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, **server)
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log", database=database)
    registry = daemon.registry()
    _, secret = registry.register(MAC, "web")
    registry.register(OTHER_MAC, "db")
    for number in range(nodes):
        registry.register(f"02:00:00:00:{number // 256:02x}:{number % 256:02x}", "web" if number % 3 else "db")
    registry.record_event(MAC, Event(stage="switch-root", ok=True, generation=3, serial=3, elapsed=14.2,
                                     timings={"network": 2.1, "manifest": 0.3, "layers": 6.5, "stack": 0.4}))
    registry.record_event(OTHER_MAC, Event(stage="layers", ok=False, generation=2, serial=5, elapsed=9.0,
                                           message="sha256 mismatch on layer 1",
                                           timings={"network": 1.9, "manifest": 0.2}))
    admins = Admins(registry.db)
    admins.add(ADMIN, PASSWORD)
    api_token, _ = admins.create_token(ADMIN, "tests")
    changes = MonitorRecords(registry.db).reconcile({(OTHER_MAC, "boot-failing"): "stage1 failed at layers"},
                                                    DEFAULT_TYPES, {MAC, OTHER_MAC}, now=time.time() - 3600)
    changes = changes if changes.opened else MonitorRecords(registry.db).reconcile(
        {(OTHER_MAC, "boot-failing"): "stage1 failed at layers"}, DEFAULT_TYPES, {MAC, OTHER_MAC})
    daemon.start()
    lab = Lab(daemon, profiles, digests, secret, api_token,
              (profiles.paths.state / "admin.token").read_text().strip(), extra={})
    lab.incident_id = changes.opened[0].id if changes.opened else 0
    reply = daemon.request("PUT", f"/nodes/{MAC}/uploads/change.tar.zst", token=secret, body=layer_upload(
        {"etc/motd": b"changed by the node\n", "opt/new/file.txt": b"new\n"}, whiteouts=("etc/os-release",)),
        headers={"Accept": "application/json"})
    assert reply.status == 202, reply.text
    lab.upload_id = json.loads(reply.body)["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = lab.api("GET", f"/uploads/{lab.upload_id}").json()
        if state["state"] in ("baked", "failed"):
            break
        time.sleep(0.1)
    assert state["held"], state
    return lab
