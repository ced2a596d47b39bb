"""Per-node SSH public keys: checked and normalised once, at registration, so the SFTP server compares strings."""

from __future__ import annotations

from layerboot.errors import LayerbootError


def check_public_key(text: str, *, source: str = "key") -> str:
    """Return the key as ``type base64`` (no comment); a clear error for anything that is not a public key."""
    try:
        import asyncssh
    except ImportError:
        raise LayerbootError("SSH keys need asyncssh", hint="pip install 'layerboot[server]'") from None
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as err:
        raise LayerbootError(f"{source}: not an OpenSSH public key ({err})",
                             hint="give the .pub file, e.g. ~/.ssh/id_ed25519.pub") from None
    return normalize(key)


def normalize(key: object) -> str:
    """``type base64`` of an asyncssh public key."""
    data = key.export_public_key("openssh").decode("ascii")  # type: ignore[attr-defined]
    return " ".join(data.split()[:2])
