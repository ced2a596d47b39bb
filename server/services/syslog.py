"""Central syslog: the boot server's rsyslog receives nodes' logs into one directory per node, one file per tag.

Inputs (UDP for stage1's boot messages and plain senders, TCP, and RELP when Debian's rsyslog-relp is
installed) run their own ruleset, so nodes' messages never mix with the server's /var/log/syslog. The node
directory is the registry's name for the sender's address, looked up in a JSON table layerbootd rewrites when
nodes change (rsyslog re-reads it on SIGHUP); a sender's own HOSTNAME field is not trusted for it. Tags
follow one structure: ``layerboot-COMPONENT`` for layerboot's own messages (stage1, heartbeat, mark-good, ...)
goes to ``NODE/layerboot/COMPONENT.log``, any other tag that is a plain word to ``NODE/TAG.log``, and the rest
(no tag, or one with other characters: it could be a path) to ``NODE/untagged.log``.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run
from layerboot.server.services.base import HEADER, Port, Service, Site, check_path, error_line, render
from layerboot.server.services.daemon import Daemon
from layerboot.server.services.hosts import HostRecord, node_table

CONFIG = "etc/rsyslog.d/40-layerboot-nodes.conf"
NODE_TABLE = "syslog-nodes.json"
RELP_MODULE = "/usr/lib/*/rsyslog/imrelp.so"
FILE_CACHE = 512              # open per-node files rsyslog keeps (dynaFileCacheSize)


def relp_available() -> bool:
    """Debian's rsyslog-relp is installed (it ships imrelp and omrelp)."""
    return bool(glob.glob(RELP_MODULE))


class Syslog(Service):
    name = "syslog"
    title = "central syslog (rsyslog)"
    package = "rsyslog"

    def daemon(self, config: Any) -> Daemon:
        return Daemon("rsyslogd", "rsyslog.service", "rsyslog", config.services_syslog_pid_file)

    @staticmethod
    def relp_port(config: Any) -> int:
        return config.services_syslog_relp_port if relp_available() else 0

    def files(self, site: Site, *, data_dir: Path | None = None) -> dict[Path, str]:
        config = site.config
        table = (data_dir or site.paths.services) / NODE_TABLE
        text = render("rsyslog-server.conf.j2", header=HEADER.format(service=self.name),
                      log_dir=check_path(config.services_syslog_dir, "services.syslog.dir").rstrip("/"),
                      node_table=check_path(table, "the store's state/services directory"),
                      keep_unregistered=config.services_syslog_unregistered == "keep",
                      udp_port=config.services_syslog_udp_port, tcp_port=config.services_syslog_tcp_port,
                      relp_port=self.relp_port(config), file_cache=FILE_CACHE)
        return {site.etc(CONFIG): text}

    def data(self, site: Site, records: Iterable[HostRecord], *, data_dir: Path | None = None) -> dict[Path, str]:
        return {(data_dir or site.paths.services) / NODE_TABLE: node_table(records)}

    def check(self, files: dict[Path, str], data: dict[Path, str], scratch: Path) -> None:
        rsyslogd = require_tool("rsyslogd", package="rsyslog")
        for path, text in data.items():
            path.write_text(text)
        includes = []
        for number, text in enumerate(files.values()):
            (scratch / f"dropin-{number}.conf").write_text(text)
            includes.append(f"$IncludeConfig {scratch}/dropin-{number}.conf")
        (scratch / "rsyslog.conf").write_text(f'global(workDirectory="{scratch}")\n' + "\n".join(includes) + "\n")
        result = run([rsyslogd, "-N1", "-f", scratch / "rsyslog.conf"], check=False, timeout=60)
        if result.returncode != 0:
            raise LayerbootError(f"rsyslogd refuses the generated configuration: {error_line(result)}")

    def ports(self, config: Any) -> list[Port]:
        ports = []
        if config.services_syslog_udp_port:
            ports.append(Port("udp", config.services_syslog_udp_port, f"udp/{config.services_syslog_udp_port}"))
        if config.services_syslog_tcp_port:
            ports.append(Port("tcp", config.services_syslog_tcp_port, f"tcp/{config.services_syslog_tcp_port}"))
        if self.relp_port(config):
            ports.append(Port("tcp", self.relp_port(config), f"relp/{self.relp_port(config)}"))
        return ports

    def dhcp_options(self, config: Any, address: str) -> list[str]:
        return [f"option:log-server,{address}"]

