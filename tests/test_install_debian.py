"""The README's install on a genuinely fresh Debian 12 (debootstrap's default variant, Debian's own python3),
then the installed system as an admin meets it: commands, man pages, completion, the units verified and scored
where they are installed, and layerbootd started by the root's own systemd, as its own user, serving a node
client that runs on Debian's packaged cryptography and zstandard.

One install per module (about 5 minutes: apt installs ~170 packages from the cached .debs); the root and
debootstrap's downloads are cached under /var/cache/layerboot/fresh-debian (see fresh_debian.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from fresh_debian import Booted, FreshRoot, fresh_root
from layerboot.ports import free_port
from layerboot.run import tool_path

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (tool_path("debootstrap") and tool_path("systemd-nspawn")),
                                 reason="needs debootstrap and systemd-nspawn (systemd-container)")]

MAC = "52:54:00:12:34:56"
NODE_CLIENT = "/srv/node-client"
# how the debootstrap base and the client layer run layerboot on a node: Debian's python3, its packages
NODE_WRAPPER = f"""#!/usr/bin/python3
import sys
sys.path.insert(0, "{NODE_CLIENT}")
from layerboot.tools.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def installed():
    with fresh_root() as root:
        assert not (root.path / "usr/bin/python3").exists(), "a fresh Debian 12 has no python3 yet"
        first = root.run(["bash", "/root/layerboot/.ci/install"], timeout=3600)
        again = root.run(["bash", "/root/layerboot/.ci/install"], timeout=1800)
        yield root, first.text, again.text


def test_install_is_a_venv_on_debians_python_and_runs_again(installed) -> None:
    root, first, again = installed
    assert "install: apt-get install " in first and "python3-venv" in first
    assert "install: done (layerboot 0.1.0 in /opt/layerboot" in first
    assert "apt-get install" not in again and "install: done" in again          # nothing left to install
    assert "home = /usr/bin" in (root.path / "opt/layerboot/pyvenv.cfg").read_text()
    assert (root.path / "usr/lib/python3.11/EXTERNALLY-MANAGED").is_file()
    system = root.run(["python3", "-c", "import sys; print(sys.executable, sys.version_info[:2])"]).text
    assert system.strip() == "/usr/bin/python3 (3, 11)"
    untouched = root.run(["python3", "-c", "import layerboot"], check=False)
    assert untouched.returncode == 1 and "No module named 'layerboot'" in untouched.stderr.decode()
    assert os.readlink(root.path / "usr/local/bin/layerboot") == "/opt/layerboot/bin/layerboot"
    assert root.run(["layerboot", "--version"]).text.strip() == "layerboot 0.1.0"
    assert root.run(["layerbootd", "--version"]).text.strip() == "layerbootd 0.1.0"
    user = root.run(["getent", "passwd", "layerboot"]).text.split(":")
    assert user[5:7] == ["/var/lib/layerboot", "/usr/sbin/nologin\n"]
    store = root.run(["stat", "-c", "%U:%G %a", "/var/lib/layerboot"]).text.strip()
    assert store == "layerboot:layerboot 750"


def test_man_pages_and_completion_are_installed(installed) -> None:
    root, _, _ = installed
    found = root.run(["man", "-w", "layerboot-profile"]).text.strip()        # /usr/local/man is a symlink
    assert root.run(["realpath", found]).text.strip() == "/usr/local/share/man/man1/layerboot-profile.1"
    page = man_text(root, "layerboot-store")
    assert "LAYERBOOT STORE GC" in page and "--keep N" in page, page[:2000]
    assert "SIGHUP" in man_text(root, "8", "layerbootd")
    completed = root.run(["bash", "-c", "source /usr/share/bash-completion/bash_completion; "
                          "_completion_loader layerboot; COMP_WORDS=(layerboot profile ro); COMP_CWORD=2; "
                          "COMP_LINE='layerboot profile ro'; COMP_POINT=${#COMP_LINE}; _shtab_layerboot; "
                          "echo ${COMPREPLY[@]}"]).text
    assert completed.split() == ["rollback"]


def test_units_verify_and_score_where_they_are_installed(installed) -> None:
    root, _, _ = installed
    units = ["/usr/local/lib/systemd/system/layerbootd.service", "/usr/local/lib/systemd/system/layerboot-pxe.service"]
    verify = root.run(["systemd-analyze", "verify", *units], check=False)
    assert verify.returncode == 0 and verify.stderr == b"", verify.stderr.decode()
    for unit in units:
        score = root.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30", unit], check=False)
        assert score.returncode == 0, score.text[-1500:]
    assert "ExecStart=/opt/layerboot/bin/layerbootd" in (root.path / units[0].lstrip("/")).read_text()


def man_text(root: FreshRoot, *page: str) -> str:
    """A man page as 'man' shows it, without the overstrikes it uses for bold and underline."""
    shown = root.run(["env", "MANWIDTH=100", "MANPAGER=cat", "PAGER=cat", "man", *page]).text
    return re.sub(".\x08", "", shown)


def _setup_store(booted: Booted, port: int) -> str:
    """As root with the CLI, as an admin would: store, key, a base, a profile with auto uploads, a node."""
    run = booted.run
    booted.root.write("etc/layerboot/layerboot.toml", f'[server]\nlisten = "127.0.0.1"\nport = {port}\n')
    booted.root.write("srv/tree/etc/os-release", "fresh base\n")
    run(["layerboot", "store", "init"])
    run(["layerboot", "key", "generate"])
    base = run(["layerboot", "layer", "import", "/srv/tree", "--all-root"]).text.strip()
    run(["layerboot", "profile", "create", "web", "--base", base])
    run(["layerboot", "uploads", "policy", "web", "auto"])
    register = run(["layerboot", "nodes", "register", MAC, "--profile", "web"]).text
    return register.split("stored): ")[1].split()[0]


def test_layerbootd_under_systemd_serves_a_node_client_on_debians_libraries(installed, tmp_path: Path) -> None:
    root: FreshRoot = installed[0]
    # the node side: Debian's python3 with Debian 12's python3-cryptography and python3-zstandard
    root.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "python3-cryptography",
              "python3-zstandard"], timeout=900)
    root.run(["/opt/layerboot/bin/python3", "-c", "from pathlib import Path; from layerboot.build.package_files "
              f"import copy_package; copy_package(Path('{NODE_CLIENT}'))"])
    root.write(f"{NODE_CLIENT}/layerboot-node", NODE_WRAPPER, mode=0o755)
    versions = root.run(["python3", "-c", "import cryptography, zstandard; "
                         "print(cryptography.__version__, zstandard.__version__)"]).text.split()
    assert versions[0].startswith("38.") and versions[1].startswith("0.20."), versions
    root.write("etc/systemd/system/layerbootd.service.d/watchdog.conf", "[Service]\nWatchdogSec=4s\n")
    port = free_port()
    with Booted(root, tmp_path / "boot.log") as booted:
        run = booted.run
        secret = _setup_store(booted, port)
        root.write("srv/node.secret", secret + "\n", mode=0o600)
        run(["systemctl", "start", "layerbootd"])
        token = run(["layerboot", "nodes", "boot-token", MAC]).text.strip()   # the daemon made the key
        started = time.monotonic()
        show = dict(line.split("=", 1) for line in run(["systemctl", "show", "layerbootd", "-p", "MainPID", "-p",
                                                        "ActiveState", "-p", "Type", "-p", "NRestarts"]).text.split())
        assert show["ActiveState"] == "active" and show["Type"] == "notify", show
        uid = next(line.split()[1] for line in run(["cat", f"/proc/{show['MainPID']}/status"]).text.splitlines()
                   if line.startswith("Uid:"))
        assert uid == run(["id", "-u", "layerboot"]).text.strip(), "layerbootd runs as its own user"
        status = json.loads(run(["curl", "-sf", "-H", "Accept: application/json",
                                 f"http://127.0.0.1:{port}/status"]).text)
        assert status["service"] == "layerbootd" and status["profiles"] == 1

        # a node's change, captured and uploaded by the client on Debian's libraries, baked by the daemon
        root.write("srv/upper/etc/hello", "from the node\n")
        node = [f"{NODE_CLIENT}/layerboot-node"]
        run([*node, "capture", "--upper", "/srv/upper", "-o", "/srv/change.tar.zst"])
        upload = run([*node, "upload", "/srv/change.tar.zst", "--server", f"http://127.0.0.1:{port}", "--node", MAC,
                      "--secret-file", "/srv/node.secret", "--wait", "120"], check=False)
        upload = upload.text + upload.stderr.decode("utf-8", "replace")
        assert ": baked" in upload and "generation 2" in upload, \
            upload + run(["journalctl", "-u", "layerbootd", "--no-pager"]).text[-3000:]
        run(["sh", "-c", f"curl -sf -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/nodes/{MAC}/manifest "
             "> /srv/web.manifest"])
        verified = run([*node, "manifest", "verify", "/srv/web.manifest", "--min-serial", "2",
                        "--key", "/var/lib/layerboot/keys/signing.pub"]).text
        assert verified.startswith("OK: web generation 2, serial 2, 2 layer(s)")

        # the watchdog is fed (4 s here), a reload keeps the process, the journal has structured access records
        time.sleep(max(0.0, 10 - (time.monotonic() - started)))
        run(["systemctl", "reload", "layerbootd"])
        time.sleep(1)
        after = dict(line.split("=", 1) for line in run(["systemctl", "show", "layerbootd", "-p", "MainPID", "-p",
                                                         "ActiveState", "-p", "NRestarts"]).text.split())
        assert after["ActiveState"] == "active" and after["NRestarts"] == "0" and after["MainPID"] == show["MainPID"]
        records = [json.loads(line) for line in
                   run(["journalctl", "-u", "layerbootd", "-o", "json", "--no-pager"]).text.splitlines()]
        messages = [r.get("MESSAGE", "") for r in records]
        assert any("reloaded the configuration" in m for m in messages), messages
        access = [r for r in records if r.get("REQUEST_PATH") == "/status"]
        assert access and access[0]["STATUS"] == "200" and access[0]["REQUEST_METHOD"] == "GET", records[-5:]
        assert access[0]["PRIORITY"] == "6" and access[0]["SYSLOG_IDENTIFIER"] == "layerbootd"
        assert not any("layerboot.server" in m for m in messages)
        run(["systemctl", "stop", "layerbootd"])
        final = run(["systemctl", "show", "layerbootd", "-p", "ActiveState", "-p", "Result"]).text.split()
        assert sorted(final) == ["ActiveState=inactive", "Result=success"]
