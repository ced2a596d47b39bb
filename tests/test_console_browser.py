"""The console in a real browser: headless Chromium driven by selenium logs in, approves an upload, rolls a
profile back and powers a QEMU node on and off through QMP, and every page is screenshotted.

Screenshots go to ``$LAYERBOOT_SCREENSHOTS`` or, by default, ``screenshots/`` in the test's tmp directory.
docs/console.md shows a set of them; to regenerate those (not done by CI)::

    LAYERBOOT_SCREENSHOTS=docs/img python3 -m pytest tests/test_console_browser.py
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console_lab import ADMIN, PASSWORD, Lab, make_lab
from layerboot.tools.cli import main
from powerlab import qmp_guest, write_power_file
from server_daemon import MAC
from test_base_import import INITRD, KERNEL, ROOTFS, make_iso, squashfs_of

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900", "--force-device-scale-factor=1")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
                                    reason="needs Debian's chromium and chromium-driver (see .ci/install)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and DRIVER, "chromium and chromium-driver are not installed (.ci/install installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=DRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Pages:
    """Drives the console like an admin and keeps a screenshot of each page."""

    def __init__(self, driver: "object", lab: Lab, shots: Path) -> None:
        self.driver, self.lab, self.shots = driver, lab, shots
        self.taken: list[str] = []
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.lab.url + path)

    def find(self, css: str) -> "object":
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self) -> str:
        return " ".join(self.find("body").text.split())

    def wait_text(self, words: str, timeout: float = 60) -> None:
        """Until ``words`` show (a page in the middle of loading has no body yet: look again)."""
        from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                                WebDriverException)
        deadline, seen = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            try:
                seen = self.text()
            except (NoSuchElementException, StaleElementReferenceException):
                seen = ""
            except WebDriverException as err:
                # Chromium's way of saying "stale" when the page navigates between finding <body> and reading
                # its text: "unhandled inspector error: ... Node with given id does not belong to the document"
                if "does not belong to the document" not in str(err):
                    raise
                seen = ""
            if words in seen:
                return
            time.sleep(0.2)
        raise AssertionError(f"{words!r} never showed; the page says: {seen[:1500]}")

    def click(self, css: str, *, confirm: bool = False) -> None:
        self.find(css).click()
        if confirm:                                   # data-confirm: the page asks first (console.js)
            alert = self.driver.switch_to.alert
            assert alert.text
            alert.accept()

    def shot(self, name: str) -> None:
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1280, min(max(int(height) + 20, 600), 2400))
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)) and path.stat().st_size > 5000
        self.driver.set_window_size(1280, 900)
        self.taken.append(name)


@needs_chromium
@pytest.mark.root
@pytest.mark.qemu
def test_an_admin_uses_the_console_in_chromium(browser: "object", profiles, make_layer, tmp_path: Path) -> None:
    shots = Path(os.environ.get("LAYERBOOT_SCREENSHOTS") or tmp_path / "screenshots")
    lab = make_lab(profiles, make_layer, tmp_path)
    try:
        with qmp_guest(tmp_path / "guest") as guest:          # a QEMU node, paused: power is off
            write_power_file(lab.daemon.paths.state / "power.toml", {MAC: guest["entry"]})
            cli = ["--config", str(lab.daemon.config)]        # one named node (fleet identity), one known by MAC
            for argv in (["clusters", "add", "lab"], ["groups", "add", "web"], ["nodes", "set", MAC, "--name", "web1"],
                         ["nodes", "set", "web1", "--cluster", "lab", "--add-group", "web", "--ip", "10.0.0.5/24",
                          "--gateway", "10.0.0.1"]):
                assert main([*cli, *argv]) == 0, argv
            ui = Pages(browser, lab, shots)
            ui.open("/console/nodes")
            assert "/console/login" in browser.current_url
            ui.shot("login")
            ui.find("#name").send_keys(ADMIN)
            ui.find("#password").send_keys(PASSWORD)
            ui.click("#login")
            ui.wait_text("lab: web")
            assert browser.current_url.endswith("/console/nodes")
            ui.shot("nodes")
            ui.open("/console/")
            ui.wait_text("open incident")
            ui.shot("dashboard")

            # approve the held upload, after a look at what it changes
            ui.open(f"/console/uploads/{lab.upload_id}")
            ui.wait_text("+ adds /opt/new/file.txt")
            ui.shot("upload")
            ui.open("/console/uploads")
            ui.shot("uploads")
            ui.click(f"#upload-{lab.upload_id} form[action$='/approve'] button")
            ui.wait_text(f"upload {lab.upload_id} approved: generation 4 of web")
            assert lab.api("GET", "/profiles/web").json()["current"]["number"] == 4

            # compare two generations, then roll back to generation 2
            ui.open("/console/profiles")
            ui.shot("profiles")
            ui.open("/console/profiles/web")
            ui.click("#diff")
            ui.wait_text("Generation 3 → 4")
            ui.shot("profile")
            ui.click("table.generations form[action$='/rollback'] input[value='2'] ~ button", confirm=True)
            ui.wait_text("web: generation 5 (rollback to generation 2)")
            current = lab.api("GET", "/profiles/web").json()["current"]
            assert current["number"] == 5 and current["layers"] == [lab.digests["base"], lab.digests["overlay"]]

            # power the QEMU node on and off through its QMP socket
            ui.open(f"/console/nodes/{MAC}")
            ui.click("form[action$='/power'] input[value='on'] ~ button")
            ui.wait_text(f"{MAC} powered on: power is on")
            assert lab.api("POST", f"/nodes/{MAC}/power", json={"action": "status"}).json()["state"] == "on"
            ui.wait_text("10.0.0.5/24 via 10.0.0.1")
            ui.shot("node")
            ui.click("form[action$='/power'] input[value='off'] ~ button", confirm=True)
            ui.wait_text(f"{MAC} powered off: power is off")
            assert lab.api("POST", f"/nodes/{MAC}/power", json={"action": "status"}).json()["state"] == "off"

            for path, name, words in (("/console/layers", "layers", "extra config"),
                                      ("/console/incidents", "incidents", "boot-failing")):
                ui.open(path)
                ui.wait_text(words)
                ui.shot(name)

            # import a live ISO in the background; the page follows the job to its end
            iso = make_iso(tmp_path, "debianlive", {"live/filesystem.squashfs": squashfs_of(tmp_path, "live", ROOTFS),
                                                    "live/vmlinuz-6.1.0-99-amd64": KERNEL,
                                                    "live/initrd.img-6.1.0-99-amd64": INITRD})
            lab.daemon.paths.imports.mkdir(exist_ok=True)
            iso.rename(lab.daemon.paths.imports / "debian-live-12.iso")
            ui.open("/console/base")
            ui.find("#iso-description").send_keys("Debian live 12")
            ui.click("#import-iso")
            ui.wait_text("(iso) started")
            ui.wait_text("finished", timeout=300)           # console.js refreshes the page while a job runs
            job = lab.api("GET", "/base-imports").json()["jobs"][0]
            assert job["state"] == "done" and job["params"]["iso"] == "debian-live-12.iso", job
            ui.shot("base-import")
            ui.click("header form.logout button")
            ui.wait_text("Log in to layerboot")
    finally:
        lab.daemon.stop()
    assert sorted(ui.taken) == sorted(["login", "nodes", "dashboard", "upload", "uploads", "profiles", "profile",
                                       "node", "layers", "incidents", "base-import"])
    problems = [entry["message"] for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert problems == [], problems                    # no script error, no Content-Security-Policy refusal
    log = lab.daemon.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert f"console: {ADMIN}: power on {MAC} via qmp" in log and f"console: {ADMIN} approved upload" in log
    print(f"console browser test: PASS ({len(ui.taken)} screenshots in {shots})")
