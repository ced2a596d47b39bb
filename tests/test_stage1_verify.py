"""stage1's stdlib-only signature check against the server side (cryptography) and layerboot's own envelopes."""

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from layerboot.initrd.stage1 import ed25519
from layerboot.initrd.stage1.verify import (SerialCache, VerifyError, load_public_key, parse_payload,
                                            verify_envelope)
from layerboot.overlays.keys import generate_key, load_private_key, public_raw
from layerboot.overlays.manifest import Artifact, Manifest, sign_manifest


def test_ed25519_accepts_cryptography_signatures_and_rejects_any_tampering() -> None:
    for size in (0, 1, 31, 64, 1000):
        key = Ed25519PrivateKey.generate()
        public = public_raw(key.public_key())
        message = os.urandom(size)
        signature = key.sign(message)
        assert ed25519.verify(public, message, signature)
        if message:
            flipped = bytes([message[0] ^ 1]) + message[1:]
            assert not ed25519.verify(public, flipped, signature)
        assert not ed25519.verify(public, message + b"x", signature)
        for index in (0, 31, 32, 63):   # R and S halves
            bad = bytearray(signature)
            bad[index] ^= 0x40
            assert not ed25519.verify(public, message, bytes(bad))
        other = public_raw(Ed25519PrivateKey.generate().public_key())
        assert not ed25519.verify(other, message, signature)


def test_ed25519_rfc8032_vector_and_malformed_inputs() -> None:
    # RFC 8032 section 7.1, TEST 2 (one-byte message 0x72).
    public = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    signature = bytes.fromhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                              "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
    assert ed25519.verify(public, b"\x72", signature)
    assert not ed25519.verify(public, b"\x73", signature)
    assert not ed25519.verify(public[:31], b"\x72", signature)
    assert not ed25519.verify(public, b"\x72", signature[:63])
    # S >= L is refused (malleability), even though S - L would verify.
    s = int.from_bytes(signature[32:], "little") + ed25519.L
    assert s < 2**256
    assert not ed25519.verify(public, b"\x72", signature[:32] + s.to_bytes(32, "little"))
    # A public key that is not a curve point.
    assert not ed25519.verify(b"\xff" * 32, b"\x72", signature)


def manifest(serial: int = 7) -> Manifest:
    return Manifest(profile="web", generation=3, serial=serial, created="2026-01-01T00:00:00+00:00",
                    cmdline="console=ttyS0", layers=(Artifact.for_object("a" * 64, 100),
                                                     Artifact.for_object("b" * 64, 50)))


@pytest.fixture
def keys(tmp_path: Path):
    generate_key(tmp_path / "k.key", tmp_path / "k.pub")
    return load_private_key(tmp_path / "k.key"), load_public_key(tmp_path / "k.pub"), tmp_path / "k.pub"


def test_envelope_signed_by_layerboot_verifies_with_the_key_file(keys) -> None:
    private, _, pub_path = keys
    public = load_public_key(str(pub_path))
    boot = verify_envelope(sign_manifest(manifest(), private), public)
    assert (boot.profile, boot.generation, boot.serial, boot.cmdline) == ("web", 3, 7, "console=ttyS0")
    assert [(layer.digest, layer.size, layer.path) for layer in boot.layers] == [
        ("a" * 64, 100, "objects/" + "a" * 64), ("b" * 64, 50, "objects/" + "b" * 64)]


def edit(envelope: bytes, change) -> bytes:
    data = json.loads(envelope)
    change(data)
    return json.dumps(data).encode()


def test_tampered_envelopes_are_refused_with_a_clear_reason(keys, tmp_path: Path) -> None:
    private, public, _ = keys
    signed = sign_manifest(manifest(), private)
    cases = {
        "does not verify": edit(signed, lambda d: d.update(payload=d["payload"].replace("a" * 64, "c" * 64))),
        "not the trusted key": edit(signed, lambda d: d.update(key_id="0" * 16)),
        "not valid base64": edit(signed, lambda d: d.update(signature="!!!")),
        "not valid JSON": signed[:-20],
        "not a layerboot-signed/1": edit(signed, lambda d: d.update(format="x")),
        "lacks a payload": edit(signed, lambda d: d.pop("payload")),
    }
    for reason, data in cases.items():
        with pytest.raises(VerifyError, match=reason):
            verify_envelope(data, public)
    generate_key(tmp_path / "o.key", tmp_path / "o.pub")
    other = load_private_key(tmp_path / "o.key")
    resigned = edit(sign_manifest(manifest(), other), lambda d: d.update(key_id=json.loads(signed)["key_id"]))
    with pytest.raises(VerifyError, match="does not verify"):
        verify_envelope(resigned, public)


def test_lower_serial_is_refused_equal_accepted(keys) -> None:
    private, public, _ = keys
    signed = sign_manifest(manifest(serial=7), private)
    assert verify_envelope(signed, public, min_serial=7).serial == 7
    with pytest.raises(VerifyError, match="lower than the last accepted 8"):
        verify_envelope(signed, public, min_serial=8)


def test_payload_checks_refuse_unsafe_layer_entries() -> None:
    good = json.loads(manifest().to_json())
    for layer_edit, reason in ((dict(path="/etc/passwd"), "unsafe path"), (dict(path="objects/../../x"), "unsafe"),
                               (dict(path="objects/x?token=1"), "unsafe"), (dict(size=-1), "invalid size"),
                               (dict(size=True), "invalid size"), (dict(digest="A" * 64), "invalid sha256")):
        data = json.loads(json.dumps(good))
        data["layers"][1].update(layer_edit)
        with pytest.raises(VerifyError, match=reason):
            parse_payload(json.dumps(data))
    data = dict(good, layers=[])
    with pytest.raises(VerifyError, match="no layers"):
        parse_payload(json.dumps(data))
    with pytest.raises(VerifyError, match="not a positive integer"):
        parse_payload(json.dumps(dict(good, serial=0)))


def test_public_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="cannot read the trusted public key"):
        load_public_key(str(tmp_path / "missing.pub"))
    (tmp_path / "short.pub").write_text(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(VerifyError, match="not a base64 Ed25519 public key"):
        load_public_key(str(tmp_path / "short.pub"))


def test_serial_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    cache = SerialCache(str(tmp_path))
    assert cache.load() == 0
    cache.store(12)
    assert SerialCache(str(tmp_path)).load() == 12
    assert not (tmp_path / "last-serial.tmp").exists()
    (tmp_path / "last-serial").write_text("garbage")
    with pytest.raises(VerifyError, match="refusing to guess"):
        cache.load()
