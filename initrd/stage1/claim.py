"""Claim this node's secret (its write credential) from layerbootd, right after the network is up.

``POST <server>/nodes/<mac>/secret`` with the boot token from the kernel command line and, in the body,
``{"proof": HMAC-SHA256(asset key, "layerboot-claim/1\\n" + boot token)}``. The asset key is the machine's
SMBIOS identity as root reads it: ``<product_uuid>:<product_serial>`` from /sys/class/dmi/id, lowercased (both
files are mode 0400, so an unprivileged user on the booted node cannot read them); the raw key never crosses
the wire. The serial is part of it because PXE firmware and iPXE send the UUID in every DHCP request (option
97) to the whole boot network: the UUID alone would be no secret there (docs/security.md). The secret goes to /run/layerboot/node.secret,
mode 0600: /run moves into the new root (system.switch_root), where ``layerboot upload`` reads it, and it is
not in the overlay's upper dir, so ``layerboot capture`` never packs it.

Everything here is best effort for the boot: a refusal, a full server disk or no answer is one line on the
console, and the node boots read-only (uploads then need a secret the admin placed).

HMAC is written out over ``_sha256`` because the ``hmac`` module imports ``_hashlib``, i.e. OpenSSL's
libcrypto (4.7 MB on Debian 12) into the initramfs; tests/test_stage1_imports.py forbids it. The result is
checked against ``hmac`` in tests/test_stage1_claim.py.
"""

from __future__ import annotations

import os

SECRET_FILE = "/run/layerboot/node.secret"
DMI_DIR = "/sys/class/dmi/id"
CONTEXT = b"layerboot-claim/1\n"
_BLOCK = 64
_SECRET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


def _sha256(data: bytes) -> bytes:
    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - other builds
        from hashlib import sha256
    return sha256(data).digest()


def hmac_sha256(key: bytes, message: bytes) -> str:
    """RFC 2104 HMAC with SHA-256, hex."""
    if len(key) > _BLOCK:
        key = _sha256(key)
    key = key.ljust(_BLOCK, b"\0")
    inner = _sha256(bytes(b ^ 0x36 for b in key) + message)
    return _sha256(bytes(b ^ 0x5C for b in key) + inner).hex()


def _dmi(path: str) -> str:
    try:
        with open(path, "rb") as f:
            value = f.read(256).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return "".join(c for c in value if " " <= c <= "~")


def read_asset_key(dmi: str = DMI_DIR) -> str:
    """``uuid:serial`` from DMI, lowercased; "" when the machine has no UUID (or a placeholder of 0s or Fs)."""
    uuid = _dmi(dmi + "/product_uuid").lower()
    digits = {c for c in uuid if c != "-"}
    if not digits or digits <= {"0"} or digits <= {"f"}:
        return ""
    return f"{uuid}:{_dmi(dmi + '/product_serial')}".lower()


def claim_proof(asset_key: str, token: str) -> str:
    return hmac_sha256(asset_key.encode("utf-8"), CONTEXT + token.encode("ascii", "replace"))


def _store(secret: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.encode("ascii") + b"\n")
    finally:
        os.close(fd)
    os.rename(tmp, path)


def claim_secret(server: str, node: str, token: str, *, timeout: float, say,  # noqa: ANN001 - say(str)
                 path: str = SECRET_FILE, dmi: str = DMI_DIR) -> str:
    """Claim and store the node secret; returns it when stored, "" otherwise. Never raises: one line says what
    happened. stage1 fetches the layers with it (a named node's own layer is served with it only)."""
    from .console import StageError
    from .http import request
    from .jsonlite import dumps, loads

    if not token:
        say("node secret: not claimed (no layerboot.token= on the command line); booting read-only")
        return ""
    key = read_asset_key(dmi)
    body = dumps({"proof": claim_proof(key, token)} if key else {}).encode("ascii")
    try:
        response = request("POST", f"{server}/nodes/{node}/secret", token=token, body=body, timeout=timeout,
                           headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            status, text = response.status, response.read(8192).decode("utf-8", "replace")
        finally:
            response.close()
        data = loads(text) if text.strip().startswith("{") else {}
    except (StageError, OSError, ValueError) as err:
        say(f"node secret: not claimed ({err}); booting read-only")
        return ""
    secret = data.get("secret") if status == 201 and isinstance(data, dict) else None
    if not (isinstance(secret, str) and 8 <= len(secret) <= 128 and _SECRET_CHARS.issuperset(secret)):
        reason = data.get("error") if isinstance(data, dict) and data.get("error") else text.strip()[:200]
        say(f"node secret: not claimed ({status} {reason}); booting read-only: uploads need a secret the "
            "admin places")
        return ""
    try:
        _store(secret, path)
    except OSError as err:
        say(f"node secret: claimed but not stored ({err.strerror}); booting read-only")
        return ""
    say(f"node secret: claimed with {'the asset key' if key else 'the MAC only'}, stored in {path} (root only)")
    return secret
