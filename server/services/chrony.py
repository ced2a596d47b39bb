"""Time: the boot server's chrony serves time to the boot networks (and keeps serving on an isolated one).

A drop-in in Debian's ``/etc/chrony/conf.d`` (read through ``confdir`` in chrony.conf) adds ``allow`` for each
boot network, ``local stratum N orphan`` so nodes get a consistent time even when the server reaches no upstream,
and any extra upstream servers; the sources chrony.conf already has stay. Nodes follow the server only
(:mod:`.node`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run
from layerboot.server.services.base import HEADER, Port, Service, Site, check_host, error_line, render
from layerboot.server.services.daemon import Daemon

CONFIG = "etc/chrony/conf.d/layerboot.conf"
MAX_STRATUM = 15
POOL_PREFIX = "pool:"


@dataclass(frozen=True)
class Upstream:
    name: str
    pool: bool


def upstream(config: Any) -> list[Upstream]:
    """services.time.upstream: host names or addresses; ``pool:NAME`` for a pool (several addresses)."""
    sources = []
    for entry in config.services_time_upstream:
        pool = entry.startswith(POOL_PREFIX)
        sources.append(Upstream(check_host(entry[len(POOL_PREFIX):] if pool else entry, "services.time.upstream"),
                                pool))
    return sources


class Time(Service):
    name = "time"
    title = "time (chrony)"
    package = "chrony"

    def daemon(self, config: Any) -> Daemon:
        return Daemon("chronyd", "chrony.service", "chrony", config.services_time_pid_file)

    def files(self, site: Site, *, data_dir: Path | None = None) -> dict[Path, str]:
        config = site.config
        if not site.networks:
            raise LayerbootError("services.time: no network may ask for time",
                                 hint="set services.networks (e.g. [\"10.0.0.0/24\"]) or pxe.interface")
        stratum = config.services_time_local_stratum
        if stratum > MAX_STRATUM:
            raise LayerbootError(f"services.time.local_stratum: {stratum} is above {MAX_STRATUM}")
        text = render("chrony-server.conf.j2", header=HEADER.format(service=self.name), networks=site.networks,
                      local_stratum=stratum, upstream=upstream(config))
        return {site.etc(CONFIG): text}

    def check(self, files: dict[Path, str], data: dict[Path, str], scratch: Path) -> None:
        chronyd = require_tool("chronyd", package="chrony")
        lines = []
        for number, text in enumerate(files.values()):
            (scratch / f"dropin-{number}.conf").write_text(text)
            lines.append(f"include {scratch}/dropin-{number}.conf")
        (scratch / "chrony.conf").write_text("\n".join(lines) + "\n")
        result = run([chronyd, "-U", "-p", "-f", scratch / "chrony.conf"], check=False, timeout=60)
        if result.returncode != 0:
            raise LayerbootError(f"chronyd refuses the generated configuration: {error_line(result)}")

    def ports(self, config: Any) -> list[Port]:
        return [Port("udp", 123, "ntp/123")]

    def dhcp_options(self, config: Any, address: str) -> list[str]:
        return [f"option:ntp-server,{address}"]
