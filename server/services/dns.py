"""DNS: dnsmasq answers for every node (``NAME.DOMAIN`` and ``NAME``, and the reverse) and forwards the rest.

A drop-in in ``/etc/dnsmasq.d`` (Debian's dnsmasq package reads that directory) makes the DNS server listen on
the services address and read the hosts files in the store's ``state/services/hosts/``. dnsmasq notices a new
or changed file there by itself (inotify); layerbootd rewrites the file when nodes change and sends SIGHUP too,
since only that makes dnsmasq forget a removed node. This is a second dnsmasq next to the one 'layerboot pxe'
runs for DHCP and TFTP (that one has DNS off).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.run import require_tool, run
from layerboot.server.services.base import (HEADER, Port, Service, Site, check_domain, check_host, check_path,
                                            error_line, render)
from layerboot.server.services.daemon import Daemon
from layerboot.server.services.hosts import HostRecord, hosts_text

CONFIG = "etc/dnsmasq.d/layerboot-dns.conf"
HOSTS_DIR = "hosts"
HOSTS_FILE = "nodes"


class Dns(Service):
    name = "dns"
    title = "DNS (dnsmasq)"
    package = "dnsmasq"

    def daemon(self, config: Any) -> Daemon:
        return Daemon("dnsmasq", "dnsmasq.service", "dnsmasq", config.services_dns_pid_file)

    def files(self, site: Site, *, data_dir: Path | None = None) -> dict[Path, str]:
        config = site.config
        hosts_dir = (data_dir or site.paths.services) / HOSTS_DIR
        text = render("dnsmasq-dns.conf.j2", header=HEADER.format(service=self.name), address=site.address,
                      hosts_dir=check_path(hosts_dir, "the store's state/services directory"),
                      domain=check_domain(config.services_dns_domain, "services.dns.domain"),
                      upstream=[check_host(s, "services.dns.upstream") for s in config.services_dns_upstream])
        return {site.etc(CONFIG): text}

    def data(self, site: Site, records: Iterable[HostRecord], *, data_dir: Path | None = None) -> dict[Path, str]:
        domain = check_domain(site.config.services_dns_domain, "services.dns.domain")
        return {(data_dir or site.paths.services) / HOSTS_DIR / HOSTS_FILE: hosts_text(records, domain)}

    def check(self, files: dict[Path, str], data: dict[Path, str], scratch: Path) -> None:
        dnsmasq = require_tool("dnsmasq", package="dnsmasq-base")
        for number, text in enumerate(files.values()):
            (scratch / f"dropin-{number}.conf").write_text(text)
            result = run([dnsmasq, "--test", f"--conf-file={scratch}/dropin-{number}.conf"], check=False, timeout=60)
            if result.returncode != 0:
                raise LayerbootError(f"dnsmasq refuses the generated configuration: {error_line(result)}")

    def ports(self, config: Any) -> list[Port]:
        return [Port("udp", 53, "udp/53"), Port("tcp", 53, "tcp/53")]

    def dhcp_options(self, config: Any, address: str) -> list[str]:
        domain = check_domain(config.services_dns_domain, "services.dns.domain")
        return [f"option:dns-server,{address}", f"option:domain-name,{domain}", f"option:domain-search,{domain}"]
