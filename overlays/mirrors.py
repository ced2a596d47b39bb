"""Which mirrors a profile's signed manifests name: the ``mirrors.*`` settings, checked once.

Objects are immutable and named by their sha256, so any HTTP cache can serve them. A manifest may list such
caches (payload fields ``mirrors``, a list of ``http://`` base URLs, and ``mirror_order``, ``latency`` or
``listed``; both left out when there are none, so a manifest without mirrors reads exactly as before). They
are signed with the rest, so a man in the middle cannot add one; stage1 (initrd/stage1/sources.py) tries them
before the origin and checks every byte against the signed hashes whoever sent it. docs/scale.md has the
deployment, docs/security.md what a mirror can and cannot do.

The list comes from ``mirrors.urls`` (every profile), replaced for a profile by its entry in
``[mirrors.profiles]`` (an empty list there: that profile uses none). It is read when a manifest is signed: a
change reaches the nodes with the profile's next generation, or at once with ``layerboot mirror publish``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.overlays.names import check_profile_name

ORDERS = ("latency", "listed")
MAX_MIRRORS = 16          # what stage1 accepts (initrd/stage1/verify.py)
MAX_URL = 256


def check_mirror_url(url: Any, what: str = "mirror") -> str:
    """An ``http://host[:port][/path]`` base URL (stage1 speaks plain HTTP: trust comes from the signed
    hashes), without a query, fragment or credentials; returned without a trailing slash."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what}: expected an http:// URL, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port   # noqa: B018 - raises ValueError for a bad port
    except ValueError as err:
        raise ValueError(f"{what} {url[:100]!r} is not a valid URL: {err}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{what} {url[:100]!r} must be an http:// URL (nodes fetch over plain HTTP; the hashes "
                         "in the signed manifest protect the bytes)")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{what} {url[:100]!r} must have no query, fragment or user name")
    if len(url) > MAX_URL or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"{what} {url[:100]!r} must be at most {MAX_URL} printable characters without spaces")
    return url.rstrip("/")


def parse_urls(value: Any, what: str = "mirror") -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of http:// base URLs, got {value!r}")
    if len(value) > MAX_MIRRORS:
        raise ValueError(f"at most {MAX_MIRRORS} mirrors (stage1 refuses more), got {len(value)}")
    urls = tuple(check_mirror_url(item, what) for item in value)
    if len(set(urls)) != len(urls):
        raise ValueError("a mirror is listed twice")
    return urls


def parse_profiles(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[mirrors.profiles]``: profile name = list of base URLs, as sorted (profile, urls) pairs (hashable, for
    the frozen Config); errors carry the profile as ``path``."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of profile = [URLs], got {value!r}")
    result = {}
    for name, urls in value.items():
        try:
            check_profile_name(name)
            result[name] = parse_urls(urls)
        except (ValueError, LayerbootError) as err:
            problem = ValueError(getattr(err, "message", None) or str(err))
            problem.path = name   # type: ignore[attr-defined]  # settings.py names the full key path
            raise problem from None
    return tuple(sorted(result.items()))


def render_profiles(value: Any) -> str:
    lines = ["[mirrors.profiles]"]
    for name, urls in sorted(dict(value).items()):
        lines.append(f"{name} = [" + ", ".join(f'"{url}"' for url in urls) + "]")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MirrorPolicy:
    """The mirrors settings: what :meth:`for_profile` puts into a profile's manifests."""

    urls: tuple[str, ...] = ()
    order: str = "latency"
    profiles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> "MirrorPolicy":
        return cls(tuple(config.mirrors_urls), config.mirrors_order, dict(config.mirrors_profiles))

    def for_profile(self, profile: str) -> tuple[str, ...]:
        return tuple(self.profiles.get(profile, self.urls))
