"""Render, apply and report the site services; and layerbootd's refresh when nodes change.

``apply`` renders every service asked for and runs each daemon's own check on the result *before* anything is
written, so a bad setting changes nothing. Then it writes what differs (atomically) and restarts a daemon whose
configuration changed, or sends SIGHUP to one whose generated data changed (the node table, the hosts file).
Each service's last outcome is kept in ``state/services/STATUS-<name>.json`` for ``status``.

``refresh`` is what layerbootd runs every services.refresh_interval seconds: only the generated data, from the
registry and the DHCP leases, rewritten and signalled when it changed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerboot.atomic import atomic_file, scratch_dir
from layerboot.errors import LayerbootError
from layerboot.paths import Paths
from layerboot.server.services.base import Service, Site, make_site
from layerboot.server.services.chrony import Time
from layerboot.server.services.dns import Dns
from layerboot.server.services.hosts import host_records
from layerboot.server.services.syslog import Syslog

log = logging.getLogger("layerboot.services")

SERVICES: tuple[Service, ...] = (Syslog(), Time(), Dns())
NAMES = tuple(s.name for s in SERVICES)


def select(names: Sequence[str] | None, config: Any) -> list[Service]:
    """The services named (all enabled ones when none are); a name that is no service is an error."""
    if names:
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise LayerbootError(f"no service {unknown[0]!r}", hint=f"the services are {', '.join(NAMES)}")
        return [s for s in SERVICES if s.name in names]
    return [s for s in SERVICES if s.enabled(config)]


def dhcp_options(config: Any, address: str) -> list[str]:
    """The DHCP options 'layerboot pxe' sends for the enabled services (log server, NTP, DNS and domain)."""
    return [option for s in SERVICES if s.enabled(config) for option in s.dhcp_options(config, address)]


# -- files ----------------------------------------------------------------------------------------------------
def _write(path: Path, text: str, *, tmp_dir: Path | None = None) -> bool:
    """Write ``text`` atomically (0644) unless the file already holds it; True when it changed."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, mode=0o644, tmp_dir=tmp_dir) as handle:
        handle.write(text.encode("utf-8"))
    return True


def _write_data(site: Site, files: dict[Path, str]) -> list[Path]:
    """Generated data, with temp files outside the directories daemons watch (dnsmasq reads a whole hostsdir)."""
    site.paths.services.mkdir(parents=True, exist_ok=True)
    os.chmod(site.paths.services, 0o755)     # dnsmasq reads the hosts files as its own user
    changed = []
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        if _write(path, text, tmp_dir=site.paths.services):
            changed.append(path)
    return changed


def rendered(site: Site, service: Service, records: list | None = None) -> tuple[dict[Path, str], dict[Path, str]]:
    """A service's configuration files and generated data, as ``apply`` would write them."""
    records = host_records(site) if records is None else records
    return service.files(site), service.data(site, records)


# -- outcomes -------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    service: str
    time: str = ""
    changed: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    error: str = ""


def _status_file(paths: Paths, name: str) -> Path:
    return paths.services / f"STATUS-{name}.json"


def _record(paths: Paths, outcome: Outcome, *, kind: str) -> None:
    """Keep the last apply (and the last refresh) of a service for ``status``; best effort."""
    path = _status_file(paths, outcome.service)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    old[kind] = asdict(outcome)
    try:
        paths.services.mkdir(parents=True, exist_ok=True)
        _write(path, json.dumps(old, indent=1, sort_keys=True) + "\n")
    except (OSError, LayerbootError) as err:
        log.warning("cannot record the %s of %s in %s: %s", kind, outcome.service, path, err)


def last_outcomes(paths: Paths, name: str) -> dict[str, Any]:
    try:
        data = json.loads(_status_file(paths, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- apply ----------------------------------------------------------------------------------------------------
def apply(site: Site, services: Iterable[Service], *, restart: bool = True) -> list[Outcome]:
    """Render and check every service, then write and restart/signal. A check failure raises before any write."""
    services = list(services)
    records = host_records(site)
    planned = []
    for service in services:
        try:
            files, data = rendered(site, service, records)
            with scratch_dir(_scratch_parent(site), prefix=f"check-{service.name}.") as scratch:
                scratch_path = Path(scratch)
                service.check(service.files(site, data_dir=scratch_path),
                              service.data(site, records, data_dir=scratch_path), scratch_path)
        except LayerbootError as err:
            _record(site.paths, Outcome(service.name, _now(), error=err.message), kind="apply")
            raise LayerbootError(f"services: {service.name}: {err.message}", hint=err.hint) from None
        planned.append((service, files, data))
    outcomes = []
    for service, files, data in planned:
        outcome = Outcome(service.name, _now())
        try:
            changed = [path for path, text in files.items() if _write(path, text)]
            changed_data = _write_data(site, data)
            outcome.changed = [str(p) for p in changed + changed_data]
            daemon = service.daemon(site.config)
            if changed and restart:
                outcome.actions.append(daemon.restart())
            elif changed_data and restart:
                outcome.actions.append(daemon.hangup())
        except (LayerbootError, OSError) as err:
            outcome.error = err.message if isinstance(err, LayerbootError) else f"{err.strerror}: {err.filename}"
        if outcome.error:
            log.error("services: %s: %s", service.name, outcome.error)
        _record(site.paths, outcome, kind="apply")
        outcomes.append(outcome)
    return outcomes


def _scratch_parent(site: Site) -> Path:
    site.paths.tmp.mkdir(parents=True, exist_ok=True)
    return site.paths.tmp


# -- refresh (layerbootd) -------------------------------------------------------------------------------------
def refresh(site: Site, services: Iterable[Service] | None = None) -> list[Outcome]:
    """Rewrite the enabled services' generated data from the registry and leases; SIGHUP whose data changed.
    Returns the outcomes of the services whose data changed (an unchanged refresh is silent)."""
    services = select(None, site.config) if services is None else list(services)
    if not services:
        return []
    records = host_records(site)
    outcomes = []
    for service in services:
        outcome = Outcome(service.name, _now())
        try:
            changed = _write_data(site, service.data(site, records))
            if not changed:
                continue
            outcome.changed = [str(p) for p in changed]
            outcome.actions.append(service.daemon(site.config).hangup())
        except (LayerbootError, OSError) as err:
            outcome.error = err.message if isinstance(err, LayerbootError) else f"{err.strerror}: {err.filename}"
        _record(site.paths, outcome, kind="refresh")
        outcomes.append(outcome)
    return outcomes


async def keep_refreshed(config: Any, paths: Paths, registry: Any) -> None:
    """layerbootd's task: refresh every services.refresh_interval seconds while any service is enabled."""
    import asyncio

    interval = config.services_refresh_interval
    if not interval or not select(None, config):
        return
    try:
        site = make_site(config, paths, registry)
    except LayerbootError as err:
        log.warning("site services not refreshed: %s", err.message)
        return
    log.info("site services: refreshing %s from the registry every %d s",
             ", ".join(s.name for s in select(None, config)), interval)
    last_error = ""
    while True:
        try:
            for outcome in await asyncio.to_thread(refresh, site):
                log.info("services: %s: %s", outcome.service,
                         outcome.error or f"updated {', '.join(outcome.changed)}; {'; '.join(outcome.actions)}")
            last_error = ""
        except Exception as err:  # noqa: BLE001 - a bad moment (database busy) must not end the refresh
            if str(err) != last_error:
                log.warning("site services not refreshed: %s", err)
            last_error = str(err)
        await asyncio.sleep(interval)


# -- status -----------------------------------------------------------------------------------------------------
@dataclass
class ServiceStatus:
    name: str
    title: str
    enabled: bool
    installed: bool
    configured: str                   # yes | stale | no | error: ...
    pid: int | None
    listening: list[str]
    missing: list[str]                # expected ports not listened on
    last_apply: str
    last_error: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(site_or_error: Site | LayerbootError, config: Any, paths: Paths) -> list[ServiceStatus]:
    """Each service: enabled, its daemon installed and running, its configuration current, its ports open."""
    result = []
    records = None
    for service in SERVICES:
        daemon = service.daemon(config)
        if isinstance(site_or_error, LayerbootError):
            configured = f"error: {site_or_error.message}"
        else:
            try:
                records = host_records(site_or_error) if records is None else records
                configured = _configured(*rendered(site_or_error, service, records))
            except LayerbootError as err:
                configured = f"error: {err.message}"
        pid = daemon.pid()
        open_ports = daemon.listening(pid) if pid else set()
        listening = [p.label for p in service.ports(config) if (p.protocol, p.number) in open_ports]
        missing = [p.label for p in service.ports(config) if (p.protocol, p.number) not in open_ports] if pid else []
        outcomes = last_outcomes(paths, service.name)
        applied = outcomes.get("apply", {})
        errors = [o.get("error", "") for o in (outcomes.get("refresh", {}), applied) if o.get("error")]
        result.append(ServiceStatus(service.name, service.title, service.enabled(config), daemon.installed,
                                    configured, pid, listening, missing, applied.get("time", ""),
                                    errors[0] if errors else ""))
    return result


def _configured(files: dict[Path, str], data: dict[Path, str]) -> str:
    present = 0
    current = 0
    for path, text in {**files, **data}.items():
        try:
            on_disk = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        present += 1
        current += on_disk == text
    if present == 0:
        return "no"
    return "yes" if current == len(files) + len(data) else "stale"
