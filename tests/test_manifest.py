import base64
import json
import os
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import generate_key, load_private_key, load_public_key
from layerboot.overlays.manifest import (Artifact, Manifest, ManifestError, sign_manifest, verify_manifest)
from layerboot.overlays.profile import Profiles
from layerboot.tools.cli import main


def sample(serial: int = 5) -> Manifest:
    return Manifest(profile="web", generation=2, serial=serial, created="2026-01-01T00:00:00+00:00",
                    cmdline="console=ttyS0", layers=(Artifact.for_object("a" * 64, 100),
                                                     Artifact.for_object("b" * 64, 50)),
                    kernel=Artifact.for_object("c" * 64, 7))


@pytest.fixture
def keypair(tmp_path: Path):
    generate_key(tmp_path / "k.key", tmp_path / "k.pub")
    return load_private_key(tmp_path / "k.key"), load_public_key(tmp_path / "k.pub")


def test_manifest_round_trips() -> None:
    manifest = sample()
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_signed_manifest_verifies(keypair) -> None:
    private, public = keypair
    manifest = verify_manifest(sign_manifest(sample(), private), public)
    assert manifest == sample()
    assert manifest.layers[0].path == "objects/" + "a" * 64


def tamper(envelope: bytes, edit) -> bytes:
    data = json.loads(envelope)
    edit(data)
    return json.dumps(data).encode()


def test_any_change_to_the_payload_is_detected(keypair) -> None:
    private, public = keypair
    signed = sign_manifest(sample(), private)
    swapped = tamper(signed, lambda d: d.update(payload=d["payload"].replace("a" * 64, "d" * 64)))
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(swapped, public)
    bumped = tamper(signed, lambda d: d.update(payload=d["payload"].replace('"serial": 5', '"serial": 9')))
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(bumped, public)


def test_a_different_key_is_refused(keypair, tmp_path: Path) -> None:
    private, _ = keypair
    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(ManifestError, match="not the trusted key"):
        verify_manifest(sign_manifest(sample(), private), load_public_key(tmp_path / "other.pub"))
    # a forged key_id does not help: the signature itself must verify with the trusted key
    other = load_public_key(tmp_path / "other.pub")
    forged = tamper(sign_manifest(sample(), private),
                    lambda d: d.update(key_id=__import__("layerboot.overlays.keys", fromlist=["key_id"]).key_id(other)))
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(forged, other)


def test_lower_serial_is_refused(keypair) -> None:
    private, public = keypair
    signed = sign_manifest(sample(serial=5), private)
    assert verify_manifest(signed, public, min_serial=5).serial == 5
    with pytest.raises(ManifestError, match="lower than the last accepted 6"):
        verify_manifest(signed, public, min_serial=6)


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[]", b'{"format": "layerboot-signed/1"}',
                                  b'{"format": "x", "payload": "{}", "signature": ""}'])
def test_garbage_is_a_manifest_error(keypair, data: bytes) -> None:
    with pytest.raises(ManifestError):
        verify_manifest(data, keypair[1])


def test_key_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_key(tmp_path / "k.key", tmp_path / "k.pub")
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(LayerbootError, match="already exists"):
        generate_key(tmp_path / "k.key", tmp_path / "k.pub")
    assert (tmp_path / "k.key").read_bytes() == before
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode((tmp_path / "k.pub").read_text())) == 32


def test_cli_verify_accepts_good_and_rejects_tampered(profiles: Profiles, make_layer, tmp_path: Path, capsys) -> None:
    base = make_layer({"a": "1"}, kind="base")
    profiles.create("web", base)
    store_args = ["--store", str(profiles.paths.root)]
    good = tmp_path / "m.json"
    good.write_bytes(profiles.signed_manifest("web"))
    assert main([*store_args, "manifest", "verify", str(good)]) == 0
    assert "OK: web generation 1, serial 1" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_bytes(tamper(good.read_bytes(), lambda d: d.update(payload=d["payload"].replace("web", "wex"))))
    assert main([*store_args, "manifest", "verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "does not verify" in err and "Traceback" not in err
    assert main([*store_args, "manifest", "verify", str(good), "--min-serial", "2"]) == 1


def _fsverity_tool(path: Path) -> str:
    from layerboot.run import run, tool_path

    if tool_path("fsverity") is None:
        pytest.skip("fsverity (fsverity-utils) is not installed")
    out = run(["fsverity", "digest", "--hash-alg=sha256", "--block-size=4096", path]).text
    return out.split()[0].removeprefix("sha256:")


@pytest.mark.parametrize("size", [0, 1, 4096, 4097, 128 * 4096, 128 * 4096 + 1, 128 * 128 * 4096 + 5])
def test_fsverity_digest_is_what_fsverity_utils_and_the_kernel_compute(tmp_path: Path, size: int) -> None:
    from layerboot.overlays.verity import fsverity_digest

    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    assert fsverity_digest(path) == _fsverity_tool(path)


def test_manifests_carry_each_layers_fsverity_digest_and_stage1_reads_it(profiles: Profiles, make_layer,
                                                                          tmp_path: Path) -> None:
    from layerboot.initrd.stage1.verify import VerifyError, parse_payload
    from layerboot.overlays.verity import fsverity_digest

    base = make_layer({"etc/os-release": "x\n"}, kind="base")
    store = profiles.store
    assert store.get(base).fsverity == fsverity_digest(store.path(base))     # computed at import
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    kernel_digest = store.import_boot_file(kernel, kind="kernel").digest
    assert store.get(kernel_digest).fsverity is None                          # only layers go to a cache
    profiles.create("node", base, kernel=kernel_digest)
    payload = json.loads(profiles.signed_manifest("node").decode())["payload"]
    data = json.loads(payload)
    assert data["layers"][0]["fsverity"] == store.get(base).fsverity and "fsverity" not in data["kernel"]
    assert parse_payload(payload).layers[0].fsverity == store.get(base).fsverity
    # A record from before the field existed gets it when the next manifest is made.
    meta = profiles.paths.object_meta(base)
    record = json.loads(meta.read_text())
    del record["fsverity"]
    meta.write_text(json.dumps(record))
    assert store.get(base).fsverity is None
    profiles.add("node", make_layer({"etc/x": "y\n"}, base=base))
    assert store.get(base).fsverity == fsverity_digest(store.path(base))
    # Manifests without the field parse as before, in stage1 and on the host; a bad value is refused.
    data["layers"][0].pop("fsverity")
    assert parse_payload(json.dumps(data)).layers[0].fsverity == ""
    assert Manifest.from_dict({**data, "created": "now"}).layers[0].fsverity is None
    data["layers"][0]["fsverity"] = "nope"
    with pytest.raises(VerifyError, match="invalid fs-verity digest 'nope'"):
        parse_payload(json.dumps(data))
