"""stage1's node secret claim: its hand-written HMAC, the DMI asset key, and the claim against the real
layerbootd (the secret lands root-only where ``layerboot upload`` finds it; any refusal only means read-only)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from layerboot.initrd.stage1.claim import claim_proof, claim_secret, hmac_sha256, read_asset_key
from layerboot.overlays.profile import Profiles
from layerboot.server.auth import claim as server_claim
from server_daemon import MAC, Daemon, boot_profile, write_config
from test_server_uploads import layer_upload

UUID = "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99"
SERIAL = "LB-0001 X"
KEY = f"{UUID}:{SERIAL}".lower()


def dmi_dir(path: Path, uuid: str, serial: str = SERIAL) -> Path:
    """A stand-in for /sys/class/dmi/id."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "product_uuid").write_text(uuid + "\n")
    (path / "product_serial").write_text(serial + "\n")
    return path


def test_the_hand_written_hmac_is_hmac_sha256() -> None:
    for key in (b"", b"k", b"x" * 64, b"y" * 65, os.urandom(200)):
        for message in (b"", b"abc", os.urandom(1000)):
            assert hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).hexdigest()
    token = "lbb1.525400123456.1.2." + "c" * 32
    assert claim_proof(KEY, token) == server_claim.claim_proof(KEY, token)


def test_the_asset_key_is_dmi_uuid_and_serial_and_placeholder_uuids_are_none(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from layerboot.server.nodes import normalize_asset_key
    from layerboot.tools.cli import main

    dmi = dmi_dir(tmp_path / "id", UUID.upper())
    assert read_asset_key(str(dmi)) == KEY == normalize_asset_key(KEY.upper())
    assert main(["asset-key", "--dmi", str(dmi)]) == 0 and capsys.readouterr().out == KEY + "\n"
    assert read_asset_key(str(dmi_dir(tmp_path / "noserial", UUID, ""))) == f"{UUID}:"
    for placeholder in ("00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", ""):
        assert read_asset_key(str(dmi_dir(tmp_path / "p", placeholder))) == ""
    assert main(["asset-key", "--dmi", str(tmp_path / "p")]) == 1
    assert "is a placeholder" in capsys.readouterr().err
    assert read_asset_key(str(tmp_path / "missing")) == ""


@pytest.fixture
def daemon(profiles: Profiles, make_layer, tmp_path: Path):  # noqa: ANN001, ANN201
    boot_profile(profiles, make_layer, tmp_path, "p1")
    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                    tmp_path / "layerbootd.log")
    daemon.registry().register(MAC, "p1", asset_key=KEY)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_claim_stores_a_root_only_secret_that_uploads(daemon: Daemon, tmp_path: Path) -> None:
    lines: list[str] = []
    dmi = dmi_dir(tmp_path / "id", UUID)
    secret_file = tmp_path / "run" / "layerboot" / "node.secret"
    token = daemon.boot_token()
    assert claim_secret(daemon.url, MAC, token, timeout=5, say=lines.append, path=str(secret_file), dmi=str(dmi))
    assert lines == [f"node secret: claimed with the asset key, stored in {secret_file} (root only)"]
    st = secret_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    secret = secret_file.read_text().strip()
    assert secret.startswith("lbs1.") and secret != token
    reply = daemon.request("PUT", f"/nodes/{MAC}/uploads/a.tar.zst", token=secret, body=layer_upload({"a": b"a"}))
    assert reply.status == 202


def test_every_refusal_is_one_line_and_a_read_only_boot(daemon: Daemon, tmp_path: Path) -> None:
    lines: list[str] = []
    dmi = dmi_dir(tmp_path / "id", UUID, "ANOTHER-SERIAL")           # the UUID (seen in DHCP) is not enough
    path = str(tmp_path / "node.secret")
    token = daemon.boot_token()
    assert not claim_secret(daemon.url, MAC, token, timeout=5, say=lines.append, path=path, dmi=str(dmi))
    assert not claim_secret(daemon.url, MAC, token, timeout=5, say=lines.append, path=path,
                            dmi=str(tmp_path / "none"))              # no DMI at all
    assert not claim_secret(daemon.url, MAC, "", timeout=5, say=lines.append, path=path, dmi=str(dmi))
    from layerboot.ports import free_port
    assert not claim_secret(f"http://127.0.0.1:{free_port()}", MAC, token, timeout=2, say=lines.append,
                            path=path, dmi=str(dmi))
    assert len(lines) == 4 and all(line.startswith("node secret: not claimed (") for line in lines)
    assert "403 the asset key proof of 52:54:00:12:34:56 does not match" in lines[0]
    assert lines[0].endswith("booting read-only: uploads need a secret the admin places")
    assert "no layerboot.token=" in lines[2] and "Connection refused" in lines[3]
    assert not os.path.exists(path)
