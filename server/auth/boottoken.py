"""Boot tokens: read-only, stateless credentials for the kernel command line.

A token is ``lbb1.<mac>.<issued>.<expires>.<tag>``: the node's MAC as 12 hex digits, issue and expiry time in
Unix seconds, and the first 128 bits of HMAC-SHA256 over everything before the tag, keyed with layerbootd's
secret ``state/boot-token.key`` (32 random bytes, hex, mode 0600, created on first start). Issuing one and
checking one need no database write, so a full store disk cannot stop a netboot, and issuing a token can never
evict or invalidate another one. Only characters that are safe in a URL, an iPXE script and a kernel command
line are used.

Revoking: every node record has ``tokens_not_before`` (``layerboot nodes revoke-tokens MAC``): tokens issued
at or before it are refused. Rotating the key (replace the file, restart layerbootd) invalidates every token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from layerboot.atomic import write_text
from layerboot.errors import LayerbootError
from layerboot.server.nodes import AuthError

PREFIX = "lbb1"
TOKEN_RE = re.compile(r"^lbb1\.([0-9a-f]{12})\.([0-9]{1,12})\.([0-9]{1,12})\.([0-9a-f]{32})$")
KEY_BYTES = 32


def looks_like_boot_token(token: str) -> bool:
    return token.startswith(PREFIX + ".")


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key in ``path``; created (mode 0600) when missing. A key others can read is refused."""
    try:
        st = path.stat()
    except FileNotFoundError:
        write_text(path, secrets.token_hex(KEY_BYTES) + "\n", mode=0o600)
        st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise LayerbootError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): whoever reads it "
                             "can mint boot tokens for any node", hint=f"chmod 600 {path}")
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LayerbootError(f"cannot read the boot-token key {path}: {getattr(err, 'strerror', None) or err}",
                             hint="remove it and restart layerbootd to make a new one "
                                  "(every outstanding boot token stops working)") from None
    if len(key) < 16:
        raise LayerbootError(f"{path} holds {len(key)} bytes; a boot-token key needs at least 16",
                             hint="remove it and restart layerbootd to make a new one")
    return key


@dataclass(frozen=True)
class BootToken:
    mac: str              # normalised, with colons
    issued: int
    expires: int


def _mac12(mac: str) -> str:
    return mac.replace(":", "")


class BootTokens:
    """Mint and check boot tokens with one key; ``ttl`` is server.boot_token_ttl (seconds)."""

    def __init__(self, key: bytes, ttl: int) -> None:
        self.key = key
        self.ttl = ttl

    def _tag(self, body: str) -> str:
        return hmac.new(self.key, body.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def mint(self, mac: str, *, now: float | None = None, ttl: int | None = None) -> str:
        issued = int(time.time() if now is None else now)
        body = f"{PREFIX}.{_mac12(mac)}.{issued}.{issued + (self.ttl if ttl is None else ttl)}"
        return f"{body}.{self._tag(body)}"

    def verify(self, token: str, *, now: float | None = None) -> BootToken:
        """The token's content if its tag is right and it has not expired; AuthError (401) otherwise."""
        match = TOKEN_RE.match(token)
        if not match:
            raise AuthError("malformed boot token")
        digits, issued, expires, tag = match.groups()
        body = token[:-(len(tag) + 1)]
        if not hmac.compare_digest(self._tag(body), tag):
            raise AuthError("invalid boot token (not made with this server's boot-token key)",
                            hint="a node gets a new one at its next PXE boot")
        if int(expires) < (time.time() if now is None else now):
            raise AuthError("boot token expired", hint="a node gets a new one at its next PXE boot "
                                                       "(server.boot_token_ttl sets how long they last)")
        mac = ":".join(digits[i:i + 2] for i in range(0, 12, 2))
        return BootToken(mac, int(issued), int(expires))


def open_boot_tokens(key_path: Path, ttl: int) -> BootTokens:
    key_path.parent.mkdir(parents=True, exist_ok=True)
    return BootTokens(load_or_create_key(key_path), ttl)
