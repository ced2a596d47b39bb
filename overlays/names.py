"""Strict patterns for every name that becomes part of a path or URL."""

from __future__ import annotations

import re

from layerboot.errors import LayerbootError

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NODE_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def check_digest(digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise LayerbootError(f"{digest!r} is not a sha256 digest (64 lowercase hex characters)")
    return digest


def check_profile_name(name: str) -> str:
    if not PROFILE_RE.fullmatch(name) or ".." in name:
        raise LayerbootError(
            f"invalid profile name {name!r}",
            hint="use 1-63 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def check_node_name(mac: str) -> str:
    """A node as a manifest names it: its MAC, lowercase hex pairs joined by colons (as iPXE prints it)."""
    if not isinstance(mac, str) or not NODE_RE.match(mac):
        raise LayerbootError(f"{mac!r} is not a node MAC in canonical form (like 52:54:00:12:34:56)")
    return mac
