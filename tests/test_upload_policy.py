"""The upload content policy (issue 11, item 2): setuid/setgid files, file capabilities and device nodes are
refused by default and allowed per profile, on every upload path (HTTP PUT and SFTP to a real layerbootd,
``layerboot bake``), while ``layer import`` and ``squash`` stay unrestricted.

The uploads are real captures of a tmpfs upper dir holding the privileged content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from layerboot.overlays.capture import capture
from layerboot.overlays.chain import mount, mount_squashfs
from layerboot.overlays.profile import Profiles
from layerboot.tools.cli import main
from layerboot.server.client import upload_status
from server_daemon import MAC, OTHER_MAC, free_port
from test_capture_bake import CAP
from test_server_uploads import Setup, setup  # noqa: F401 - the daemon fixture

RULE_HINT = "is refused by the upload content policy (rule {rule}; allow it with 'layerboot uploads policy " \
            "PROFILE --allow {rule}')"


def _setuid(u: Path) -> None:
    (u / "usr/bin").mkdir(parents=True)
    (u / "usr/bin/tool").write_text("#!/bin/sh\n")
    os.chmod(u / "usr/bin/tool", 0o4755)


def _setgid(u: Path) -> None:
    (u / "usr/bin").mkdir(parents=True)
    (u / "usr/bin/tool").write_text("#!/bin/sh\n")
    os.chmod(u / "usr/bin/tool", 0o2711)


def _caps(u: Path) -> None:
    (u / "usr/bin").mkdir(parents=True)
    (u / "usr/bin/tool").write_text("#!/bin/sh\n")
    os.setxattr(u / "usr/bin/tool", "security.capability", CAP)


def _chardev(u: Path) -> None:
    (u / "usr/bin").mkdir(parents=True)
    os.mknod(u / "usr/bin/tool", stat.S_IFCHR | 0o666, os.makedev(1, 1))      # /dev/mem


def _blockdev(u: Path) -> None:
    (u / "usr/bin").mkdir(parents=True)
    os.mknod(u / "usr/bin/tool", stat.S_IFBLK | 0o666, os.makedev(8, 0))      # /dev/sda


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "setuid": (_setuid, "setuid", "a setuid file (mode 4755)"),
    "setgid": (_setgid, "setuid", "a setgid file (mode 2711)"),
    "caps": (_caps, "caps", "a file capability (security.capability)"),
    "chardev": (_chardev, "devices", "a character device node 1:1"),
    "blockdev": (_blockdev, "devices", "a block device node 8:0"),
}


def harmless(u: Path) -> None:
    """What stays allowed by default: a setgid directory, a whiteout, plain files."""
    (u / "srv/shared").mkdir(parents=True)
    os.chmod(u / "srv/shared", 0o2775)
    (u / "srv/shared/f").write_text("f\n")
    os.mknod(u / "srv/deleted", stat.S_IFCHR | 0o600, os.makedev(0, 0))


def captured(tmp: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Capture a tmpfs upper dir filled by ``fill`` as a node would."""
    archive = tmp / f"{name}.tar.zst"
    with contextlib.ExitStack() as stack:
        upper = tmp / f"upper-{name}"
        upper.mkdir()
        mount(stack, "tmpfs", upper, fstype="tmpfs", options="mode=0755")
        harmless(upper)
        fill(upper)
        capture(upper, archive)
    return archive


def refusal(case: str) -> str:
    _, rule, what = CASES[case]
    return f"upload rejected: 'usr/bin/tool': {what} " + RULE_HINT.format(rule=rule)


@pytest.mark.root
def test_http_uploads_are_refused_by_class_then_allowed_per_profile(setup: Setup, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    daemon = setup.start(upload_policy="auto")

    def cli(*args: str) -> int:
        return main(["--config", str(tmp_path / "layerboot.toml"), *args])

    archives = {case: captured(tmp_path, case, fill) for case, (fill, _, _) in CASES.items()}
    before = setup.profiles.current("p1").number

    for case, archive in archives.items():
        reply = setup.put(f"{case}.tar.zst", archive.read_bytes()).json()
        status = setup.wait_state(reply["id"], ("baked", "failed"))
        assert (status["state"], status["message"]) == ("failed", refusal(case)), case
    assert setup.profiles.current("p1").number == before, "no refused upload reached the profile"
    assert f"upload {reply['id']} refused: {refusal('blockdev')}" in daemon.log.read_text()

    reply = setup.put("harmless.tar.zst", captured(tmp_path, "harmless", lambda u: None).read_bytes()).json()
    assert setup.wait_state(reply["id"], ("baked", "failed"))["state"] == "baked", "setgid dirs, whiteouts are fine"

    assert cli("uploads", "policy", "p1") == 0
    assert capsys.readouterr().out == "p1: auto; content allowed: none; refused: setuid,caps,devices\n"
    assert cli("uploads", "policy", "p1", "--allow", "setuid,devices", "--allow", "caps") == 0
    assert capsys.readouterr().out == "p1: auto; content allowed: setuid,caps,devices; refused: none\n"
    assert cli("uploads", "policy", "p2") == 0
    assert capsys.readouterr().out == "p2: auto; content allowed: none; refused: setuid,caps,devices\n"

    for case, archive in archives.items():
        reply = setup.put(f"{case}.tar.zst", archive.read_bytes()).json()
        status = setup.wait_state(reply["id"], ("baked", "failed"))
        assert status["state"] == "baked", (case, status)
    with contextlib.ExitStack() as stack:
        top = mount_squashfs(stack, setup.profiles.store.path(setup.profiles.current("p1").layers[-1]),
                             tmp_path / "top")
        st = os.lstat(top / "usr/bin/tool")
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(8, 0), "the allowed device was kept as is"

    # the other profile still refuses, and a class can be withdrawn again
    other = setup.put("caps.tar.zst", archives["caps"].read_bytes(), token=setup.other_token, mac=OTHER_MAC).json()
    deadline = time.monotonic() + 30
    while (status := upload_status(other["id"], server=daemon.url, mac=OTHER_MAC,
                                   secret=setup.other_token))["state"] not in ("baked", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["message"] == refusal("caps")
    assert cli("uploads", "policy", "p1", "hold", "--deny", "caps") == 0
    assert capsys.readouterr().out == "p1: hold; content allowed: setuid,devices; refused: caps\n"
    reply = setup.put("caps-again.tar.zst", archives["caps"].read_bytes()).json()
    assert setup.wait_state(reply["id"], ("baked", "failed"))["message"] == refusal("caps")


@pytest.mark.root
def test_sftp_uploads_meet_the_same_policy(profiles: Profiles, make_layer, tmp_path: Path) -> None:
    import asyncssh

    from layerboot.server.sshkeys import normalize
    from server_daemon import Daemon, boot_profile, write_config
    from test_server_sftp import _session, wait_baked

    boot_profile(profiles, make_layer, tmp_path, "p1")
    key = asyncssh.generate_private_key("ssh-ed25519")
    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths, upload_policy="auto"),
                    tmp_path / "layerbootd.log", ssh_port=free_port())
    daemon.registry().register(MAC, "p1", ssh_keys=(normalize(key),))
    data = captured(tmp_path, "setuid", _setuid).read_bytes()

    async def put(name: str) -> None:
        async with await _session(daemon, key) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open(name, "wb") as handle:
                await handle.write(data)

    daemon.start()
    try:
        asyncio.run(put("first.tar.zst"))
        [first] = wait_baked(daemon, 1)
        assert (first.state, first.via, first.message) == ("failed", "sftp", refusal("setuid"))
        assert main(["--store", str(profiles.paths.root), "uploads", "policy", "p1", "--allow", "setuid"]) == 0
        asyncio.run(put("second.tar.zst"))
        second = [u for u in wait_baked(daemon, 2) if u.name == "second.tar.zst"][0]
        assert second.state == "baked" and profiles.current("p1").layers[-1] == second.layer
    finally:
        daemon.stop()


@pytest.mark.root
def test_cli_bake_applies_the_profile_policy_and_import_is_unrestricted(profiles: Profiles, make_layer,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = profiles.store
    root = str(store.paths.root)
    base = make_layer({"etc/motd": "base\n"}, kind="base")
    profiles.create("web", base)
    archive = captured(tmp_path, "devices", _chardev)

    assert main(["--store", root, "bake", str(archive), "--profile", "web"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"layerboot: error: {refusal('chardev')}"]
    assert main(["--store", root, "bake", str(archive), "--base", base, "--allow", "devices"]) == 0
    capsys.readouterr()
    assert main(["--store", root, "uploads", "policy", "web", "--allow", "devices"]) == 0
    assert main(["--store", root, "bake", str(archive), "--profile", "web"]) == 0
    assert profiles.current("web").number == 2
    assert main(["--store", root, "uploads", "policy", "web", "--allow", "sudo"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["layerboot: error: unknown content class 'sudo'", "layerboot: hint: use setuid, caps, devices, all "
                   "or none"]

    tree = tmp_path / "admin-tree"
    _setuid(tree)
    _caps(tree / "extra")
    os.mknod(tree / "usr/bin/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))
    assert main(["--store", root, "layer", "import", str(tree), "--kind", "overlay", "--base", base]) == 0
