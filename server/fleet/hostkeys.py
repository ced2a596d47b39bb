"""Per-node SSH host keys: generated once per node on the server, kept root-only, delivered in its node layer.

The keys of a node live in ``state/nodekeys/<machine-id>/ssh_host_<type>_key`` (OpenSSH private key format,
mode 0600, directories 0700), keyed by the node's machine id, which never changes while the node exists (a
rename or a new MAC keeps its keys; ``nodes clone`` makes a new machine id, so new keys). They are made with
the ``cryptography`` package (no ssh-keygen child per key); the public half and its fingerprint are derived
when the node layer is rendered, so ``nodes show`` and a booted node's ``ssh-keygen -lf`` agree.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from layerboot.atomic import write_bytes
from layerboot.errors import LayerbootError
from layerboot.paths import Paths

KEY_TYPES = ("ed25519", "ecdsa", "rsa")
RSA_BITS = 3072              # OpenSSH's default for host keys


@dataclass(frozen=True)
class HostKey:
    type: str                 # ed25519, ecdsa, rsa
    private: bytes            # OpenSSH private key file content
    public: str               # "ssh-ed25519 AAAA..." (no comment)
    fingerprint: str          # "SHA256:..." as ssh-keygen -l prints it

    @property
    def filename(self) -> str:
        return f"ssh_host_{self.type}_key"


def keys_dir(paths: Paths, machine_id: str) -> Path:
    return paths.state / "nodekeys" / machine_id


def _generate(kind: str):  # noqa: ANN202 - a cryptography private key
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _load(kind: str, data: bytes) -> HostKey:
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_ssh_private_key(data, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    blob = base64.b64decode(public.split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return HostKey(kind, data, public, fingerprint)


def host_keys(paths: Paths, machine_id: str, types: tuple[str, ...] = KEY_TYPES) -> list[HostKey]:
    """The node's host keys of ``types``, generated (and kept) the first time they are asked for."""
    from cryptography.hazmat.primitives import serialization

    unknown = [t for t in types if t not in KEY_TYPES]
    if unknown:
        raise LayerbootError(f"fleet.ssh_host_key_types: unknown key type {unknown[0]!r}",
                             hint="use ed25519, ecdsa and/or rsa")
    directory = keys_dir(paths, machine_id)
    keys = []
    for kind in types:
        path = directory / f"ssh_host_{kind}_key"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            for parent in (directory.parent, directory):
                parent.mkdir(mode=0o700, exist_ok=True)
                os.chmod(parent, 0o700)
            data = _generate(kind).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption())
            write_bytes(path, data, mode=0o600)
        keys.append(_load(kind, data))
    return keys


def forget(paths: Paths, machine_id: str) -> None:
    """Remove a node's host keys (the node is removed)."""
    if machine_id:
        shutil.rmtree(keys_dir(paths, machine_id), ignore_errors=True)
