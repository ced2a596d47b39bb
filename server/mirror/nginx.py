"""``layerboot mirror nginx-config``: an nginx proxy_cache configuration for a rack mirror of the origin.

The template (templates/nginx-mirror.conf.j2, rendered by Jinja2) makes nginx a cache of ``/objects/<sha256>``
only: sliced (``slice``: a large base is fetched and cached in pieces, so nodes start receiving while the rest
is still on its way), with ``proxy_cache_lock`` (a storm of nodes asking for one missing slice causes one
request to the origin), cached for good (objects never change), everything else 404. Every value that goes
into the file is checked first, so nothing a user types can add an nginx directive.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from layerboot import __version__
from layerboot.errors import LayerbootError

TEMPLATE = "nginx-mirror.conf.j2"
SIZE_RE = re.compile(r"^[1-9][0-9]{0,8}[kKmMgG]?$")
TIME_RE = re.compile(r"^[1-9][0-9]{0,6}(ms|s|m|h|d|y)?$")
LISTEN_RE = re.compile(r"^(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}:|\[[0-9A-Fa-f:.]+\]:)?([0-9]{1,5})$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[[0-9A-Fa-f:.]+\]$")


@dataclass(frozen=True)
class MirrorConfig:
    origin: str                              # the origin's base URL (server.public_url), http://HOST[:PORT]
    listen: str = "8080"                     # nginx "listen": PORT, ADDR:PORT or [ADDR6]:PORT
    cache_dir: str = "/var/cache/layerboot-mirror"
    max_size: str = "100g"                   # the cache's size on disk
    slice: str = "8m"
    allow: tuple[str, ...] = ()              # client networks (CIDR); empty: everyone who reaches nginx
    zone: str = "layerboot"
    keys_zone: str = "16m"                   # shared memory for cache keys (1 MB holds about 8000 keys)
    inactive: str = "365d"                   # an object nobody asked for this long leaves the cache
    valid: str = "365d"
    lock_timeout: str = "60s"                # how long a node waits for another's fetch of the same slice
    full: bool = False                       # a complete nginx.conf instead of a conf.d snippet
    user: str = "www-data"                   # full: the worker user
    run_dir: str = "/run/layerboot-mirror"   # full: pid, error and access logs, temp files
    daemon: bool = True                      # full: "daemon off" to run in the foreground

    def check(self) -> "MirrorConfig":
        from layerboot.urls import parse_http_url

        url = parse_http_url(self.origin, what="the origin URL (--origin or server.public_url)")
        if url.scheme != "http":
            raise LayerbootError(f"the origin {self.origin!r} must be an http:// URL (layerbootd speaks HTTP)")
        if url.path:
            raise LayerbootError(f"the origin {self.origin!r} must be the server's base URL without a path "
                                 f"(objects are at {self.origin.rstrip('/').rsplit(url.path, 1)[0]}/objects/)")
        match = LISTEN_RE.fullmatch(self.listen)
        if not match or not 0 < int(match.group(1)) < 65536:
            raise LayerbootError(f"--listen {self.listen[:60]!r}: use PORT, ADDRESS:PORT or [IPV6]:PORT")
        for option, value in (("--max-size", self.max_size), ("--slice", self.slice),
                              ("keys zone", self.keys_zone)):
            if not SIZE_RE.fullmatch(value):
                raise LayerbootError(f"{option} {value[:40]!r} is not an nginx size (like 512m or 100g)")
        for option, value in (("inactive", self.inactive), ("valid", self.valid),
                              ("--lock-timeout", self.lock_timeout)):
            if not TIME_RE.fullmatch(value):
                raise LayerbootError(f"{option} {value[:40]!r} is not an nginx time (like 60s or 365d)")
        for option, value in (("--cache-dir", self.cache_dir), ("--run-dir", self.run_dir)):
            if not PATH_RE.fullmatch(value) or "/../" in value + "/":
                raise LayerbootError(f"{option} {value[:80]!r} must be an absolute path of letters, digits and "
                                     "'._+-/'")
        if not NAME_RE.fullmatch(self.zone) or not NAME_RE.fullmatch(self.user.replace("-", "_")):
            raise LayerbootError("the zone and user names must be short lowercase words")
        for cidr in self.allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise LayerbootError(f"--allow {cidr[:60]!r} is not an address or network (like 10.1.0.0/16)") \
                    from None
        return self

    def values(self) -> dict[str, object]:
        from layerboot.urls import parse_http_url

        url = parse_http_url(self.origin)
        host = url.host if ":" not in url.host else f"[{url.host}]"
        port = url.port or 80
        return {"version": __version__, "origin": self.origin.rstrip("/"), "origin_host": host,
                "origin_port": port, "origin_hostport": f"{host}:{port}", "listen": self.listen,
                "cache_dir": self.cache_dir, "max_size": self.max_size, "slice": self.slice,
                "allow": [str(ipaddress.ip_network(c, strict=False)) for c in self.allow], "zone": self.zone,
                "keys_zone": self.keys_zone, "inactive": self.inactive, "valid": self.valid,
                "lock_timeout": self.lock_timeout, "full": self.full, "user": self.user, "run_dir": self.run_dir,
                "daemon": self.daemon,
                "access_log": (f"{self.run_dir}/access.log" if self.full
                               else f"/var/log/nginx/{self.zone}-mirror.log")}


def render(config: MirrorConfig) -> str:
    """The nginx configuration text for ``config`` (checked first)."""
    import jinja2

    config.check()
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                     undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                                     trim_blocks=True, lstrip_blocks=True)
    return environment.get_template(TEMPLATE).render(**config.values())
