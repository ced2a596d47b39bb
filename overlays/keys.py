"""Ed25519 signing keys: the server keeps the private key; nodes get the public key baked into their initrd.

The public key file is one line: the raw 32-byte key in base64, so stage1 can read it without parsing PEM.
``cryptography`` is imported only where a key is made, loaded or checked: the node-side client (capture,
upload) imports this module through the CLI and must not need the 14 MB OpenSSL binding.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from layerboot.atomic import create_exclusive, write_text
from layerboot.errors import LayerbootError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def key_id(public_raw: bytes) -> str:
    """A short, stable name for a public key (first 16 hex digits of its sha256)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key(private_path: Path, public_path: Path) -> str:
    """Create a new key pair; refuse to overwrite an existing private key. Returns the key id."""
    if private_path.exists():
        raise LayerbootError(f"a signing key already exists at {private_path}",
                             hint="remove it first if you really mean to replace it (nodes must get the new "
                                  "public key in their initrd)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = public_raw(key.public_key())
    if not create_exclusive(private_path, pem, mode=0o600):
        raise LayerbootError(f"a signing key already exists at {private_path}")
    write_text(public_path, base64.b64encode(raw).decode() + "\n")
    return key_id(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LayerbootError(f"no signing key at {path}", hint="create one with 'layerboot key generate'") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise LayerbootError(f"{path} is not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LayerbootError(f"{path} is not an Ed25519 key")
    return key


def decode_public_key(text: str, *, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise LayerbootError(f"{source} is not a base64 Ed25519 public key (32 bytes)")
    return raw


def load_public_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (FileNotFoundError, UnicodeDecodeError):
        raise LayerbootError(f"no readable public key at {path}",
                             hint="the public key is written by 'layerboot key generate'") from None
    return decode_public_key(text, source=str(path))


def verify_signature(public: bytes, signature: bytes, payload: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)
    except InvalidSignature:
        return False
    return True
