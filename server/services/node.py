"""The node side of the site services: files for a node's per-node layer (rendered from ``templates/node/``).

:func:`node_files` is what the per-node layer renderer calls::

    from layerboot.server.services.node import node_files
    files = node_files(config, {"name": "n001", "syslog": ["server"], "ntp": ["server"]})
    # {"/etc/rsyslog.d/20-layerboot-forward.conf": "...", "/etc/chrony/chrony.conf": "...", ...}

``node_context`` is a mapping with any of these keys (what a fleet node record has; a missing key, or None,
takes the site's default):

* ``syslog``: log servers (IP addresses or host names; the word ``server`` is services.address). Default:
  ``["server"]`` when services.syslog.enabled, else none; an empty list: no forwarding.
* ``ntp``: time servers, the same way (services.time.enabled).
* ``name``: the node's name (only shown in the files' header).

What the files do on a Debian base (each is inert when its daemon is not installed):

* ``/etc/rsyslog.d/20-layerboot-forward.conf``: forward every message to the log servers (TCP with RFC 6587
  octet counting, or RELP: services.syslog.node_protocol) through a memory queue that spills to
  services.syslog.node_spool while a server is away (services.syslog.node_queue at most) and is saved at shutdown;
  then ``stop``, so the file rules of Debian's /etc/rsyslog.conf never write /var/log/syslog & co.
* ``/etc/systemd/journald.conf.d/50-layerboot.conf``: the journal in RAM only, forwarded to rsyslog.
* ``/etc/chrony/chrony.conf``: the time servers only (no pool, no log files).
* ``/etc/systemd/timesyncd.conf.d/50-layerboot.conf``: the same for systemd-timesyncd.

DNS needs no file: 'layerboot pxe' hands out the DNS server and search domain by DHCP and stage1 links
/etc/resolv.conf to what it learnt (docs/stage1.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.services.base import (NODE_HEADER, check_host, check_path, check_size, render,
                                            service_address)
from layerboot.server.services.hosts import NAME_RE

SERVER_WORD = "server"
RSYSLOG_FORWARD = "/etc/rsyslog.d/20-layerboot-forward.conf"
JOURNALD = "/etc/systemd/journald.conf.d/50-layerboot.conf"
CHRONY = "/etc/chrony/chrony.conf"
TIMESYNCD = "/etc/systemd/timesyncd.conf.d/50-layerboot.conf"
MAX_SERVERS = 8


def _servers(node_context: Mapping[str, Any], key: str, enabled: bool, config: Any) -> list[str]:
    wanted = node_context.get(key)
    if wanted is None:
        wanted = [SERVER_WORD] if enabled else []
    if isinstance(wanted, str) or not isinstance(wanted, Sequence):
        raise LayerbootError(f"node {key}: expected a list of servers, got {wanted!r}")
    if len(wanted) > MAX_SERVERS:
        raise LayerbootError(f"node {key}: at most {MAX_SERVERS} servers")
    servers = []
    for entry in wanted:
        server = service_address(config) if entry == SERVER_WORD else check_host(str(entry), f"node {key}")
        if server not in servers:
            servers.append(server)
    return servers


def node_files(config: Any, node_context: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Files for one node's per-node layer: absolute path in the node's root -> text."""
    context = node_context or {}
    name = str(context.get("name") or "")
    name = name if NAME_RE.fullmatch(name) else "this node"      # it goes into a comment line
    files: dict[str, str] = {}
    log_servers = _servers(context, "syslog", config.services_syslog_enabled, config)
    if log_servers:
        relp = config.services_syslog_node_protocol == "relp"
        port = config.services_syslog_relp_port if relp else config.services_syslog_tcp_port
        if not port:
            raise LayerbootError(f"services.syslog.{'relp' if relp else 'tcp'}_port is 0, but nodes forward over "
                                 f"{'RELP' if relp else 'TCP'} (services.syslog.node_protocol)")
        header = NODE_HEADER.format(service=f"syslog, {name}")
        files[RSYSLOG_FORWARD] = render("node/rsyslog-forward.conf.j2", header=header, servers=log_servers,
                                        port=port, protocol="relp" if relp else "tcp",
                                        spool=check_path(config.services_syslog_node_spool,
                                                         "services.syslog.node_spool"),
                                        queue=check_size(config.services_syslog_node_queue,
                                                         "services.syslog.node_queue"))
        files[JOURNALD] = render("node/journald.conf.j2", header=header)
    time_servers = _servers(context, "ntp", config.services_time_enabled, config)
    if time_servers:
        header = NODE_HEADER.format(service=f"time, {name}")
        files[CHRONY] = render("node/chrony.conf.j2", header=header, servers=time_servers)
        files[TIMESYNCD] = render("node/timesyncd.conf.j2", header=header, servers=time_servers)
    return files
