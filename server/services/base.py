"""What the site services share: the :class:`Site` they are rendered for, the templates, a service's shape.

Every value that reaches a daemon's configuration is checked here first (addresses, networks, host names,
paths), so a template never has to quote: a bad setting is one error naming its key, before anything is
written.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from layerboot.errors import LayerbootError
from layerboot.paths import Paths
from layerboot.safetext import printable

if TYPE_CHECKING:
    from layerboot.server.services.daemon import Daemon
    from layerboot.server.services.hosts import HostRecord

HEADER = "written by 'layerboot services apply' ({service}): changes here are overwritten"
NODE_HEADER = "written by layerboot for this node's per-node layer ({service}): changes here are overwritten"
HOST_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
DOMAIN_RE = re.compile(r"(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SIZE_RE = re.compile(r"[1-9][0-9]{0,8}[kmg]?")
SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9_./@+-]*")


@functools.cache
def _environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise LayerbootError("the site services need Jinja2", hint="pip install layerboot[server] (or apt-get "
                             "install python3-jinja2)") from None
    return jinja2.Environment(loader=jinja2.PackageLoader("layerboot.server.services", "templates"),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                              lstrip_blocks=True, autoescape=False)


def render(template: str, **values: Any) -> str:
    """Render one packaged template (``templates/NAME``); an unknown variable is an error, never empty text."""
    return _environment().get_template(template).render(**values)


def error_line(result: Any) -> str:
    """The line of a daemon's configuration check that says what is wrong (a Result from layerboot.run)."""
    lines = [line.strip() for line in (result.stderr + result.stdout).decode("utf-8", "replace").splitlines()]
    errors = [line for line in lines if ("error" in line.lower() or "bad" in line.lower()) and line]
    return printable((errors or [line for line in lines if line] or [f"status {result.returncode}"])[0][:300])


# -- checked values ---------------------------------------------------------------------------------------
def check_address(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LayerbootError(f"{what}: {printable(text[:60])!r} is not an IP address") from None


def check_host(text: str, what: str) -> str:
    """An IP address or a DNS host name (for upstream servers)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not HOST_RE.fullmatch(text):
        raise LayerbootError(f"{what}: {printable(text[:60])!r} is neither an IP address nor a host name")
    return text.lower()


def check_network(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as err:
        raise LayerbootError(f"{what}: {printable(text[:60])!r} is not a network in CIDR form ({err})",
                             hint="write it like 10.0.0.0/24 (no host bits set)") from None


def check_domain(text: str, what: str) -> str:
    value = text.lower().rstrip(".")
    if not DOMAIN_RE.fullmatch(value):
        raise LayerbootError(f"{what}: {printable(text[:60])!r} is not a DNS domain",
                             hint="lowercase labels of letters, digits and '-', joined by dots")
    return value


def check_size(text: str, what: str) -> str:
    value = text.strip().lower()
    if not SIZE_RE.fullmatch(value):
        raise LayerbootError(f"{what}: {printable(text[:40])!r} is not a size like 256m, 2g or 500000k")
    return value


def check_path(path: Path, what: str) -> str:
    """An absolute path that can go into any daemon's configuration unquoted."""
    text = str(path)
    if not SAFE_PATH_RE.fullmatch(text) or "/../" in text + "/":
        raise LayerbootError(f"{what}: {printable(text[:80])!r} must be an absolute path of letters, digits and "
                             "'_./@+-' (it goes into rsyslog, chrony and dnsmasq configuration)")
    return text


# -- the site ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """What the services are rendered for: settings, the store's paths, and the address nodes reach us at."""

    config: Any
    paths: Paths
    address: str
    networks: tuple[str, ...]
    registry: Any = field(default=None, compare=False)    # layerboot.server.nodes.Registry (None: no nodes)

    @property
    def root(self) -> Path:
        return Path(self.config.services_root)

    def etc(self, relative: str) -> Path:
        """A daemon's configuration path below services.root (``/`` on a real server)."""
        return self.root / relative


def service_address(config: Any) -> str:
    """The address nodes reach the site services at: services.address, else pxe.interface's, else the host of
    server.public_url when it is an IP address."""
    if config.services_address:
        return check_address(config.services_address, "services.address")
    if config.pxe_interface:
        from layerboot.server.pxe import interface_address
        return str(interface_address(config.pxe_interface).ip)
    host = urlsplit(config.server_public_url).hostname if config.server_public_url else None
    if host:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
    raise LayerbootError("the site services need the address nodes reach this server at",
                         hint="set services.address (or pxe.interface) in the config")


def service_networks(config: Any) -> tuple[str, ...]:
    """The boot networks allowed to ask for time: services.networks, else pxe.interface's subnet."""
    if config.services_networks:
        return tuple(check_network(n, "services.networks") for n in config.services_networks)
    if config.pxe_interface:
        from layerboot.server.pxe import interface_address
        return (str(interface_address(config.pxe_interface).network),)
    return ()


def make_site(config: Any, paths: Paths, registry: Any = None) -> Site:
    return Site(config=config, paths=paths, address=service_address(config), networks=service_networks(config),
                registry=registry)


# -- a service ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Port:
    protocol: str        # tcp | udp
    number: int
    label: str           # what the status shows: "tcp/514", "relp/2514"


class Service:
    """One site service. Subclasses render files; :mod:`.manage` writes, checks, restarts and reports."""

    name: str = ""
    title: str = ""
    package: str = ""

    def enabled(self, config: Any) -> bool:
        return bool(getattr(config, f"services_{self.name}_enabled"))

    def daemon(self, config: Any) -> "Daemon":
        raise NotImplementedError

    def files(self, site: Site, *, data_dir: Path | None = None) -> dict[Path, str]:
        """The daemon's configuration drop-ins, by absolute path. ``data_dir`` stands in for the generated data's
        directory (the check renders against a scratch copy)."""
        raise NotImplementedError

    def data(self, site: Site, records: "Iterable[HostRecord]", *, data_dir: Path | None = None) -> dict[Path, str]:
        """Generated data the daemon reads (hosts files, the node table); rewritten when nodes change."""
        return {}

    def check(self, files: dict[Path, str], data: dict[Path, str], scratch: Path) -> None:
        """Run the daemon's own configuration check on ``files`` (rendered against ``scratch`` as data_dir)."""

    def ports(self, config: Any) -> list[Port]:
        return []

    def dhcp_options(self, config: Any, address: str) -> list[str]:
        """dnsmasq ``dhcp-option=`` values 'layerboot pxe' sends for this service (when it is enabled)."""
        return []
