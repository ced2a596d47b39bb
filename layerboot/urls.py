"""Server URLs given by users (``--server``, ``server.public_url``, ``layerboot.server=``): checked once, so a bad
port or bracket is one clear error instead of urllib's ValueError deep inside a request."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from layerboot.errors import LayerbootError


@dataclass(frozen=True)
class HttpUrl:
    scheme: str
    host: str
    port: int | None
    path: str                  # without a trailing slash


def parse_http_url(url: str, *, what: str = "server URL") -> HttpUrl:
    """``http(s)://host[:port][/path]``; anything else is a LayerbootError naming ``what``."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise LayerbootError(f"{what} {url[:200]!r} is not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LayerbootError(f"{what} {url[:200]!r} must look like http://HOST:PORT")
    return HttpUrl(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))
