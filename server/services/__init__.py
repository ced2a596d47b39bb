"""Site services next to the boot server: central syslog, time and DNS on the daemons admins already run.

layerboot renders drop-in configuration for Debian's own daemons from its settings (``[services]``) and node
registry, with Jinja2 templates shipped as package data (``templates/``), checks it with the daemon itself,
writes what changed, and restarts or signals the daemon:

* :mod:`.syslog` — rsyslog receives nodes' logs (UDP, TCP, RELP) into one directory per node, one file per tag;
* :mod:`.chrony` — chrony serves time to the boot networks;
* :mod:`.dns` — dnsmasq answers for every node's name and address;
* :mod:`.hosts` — the (name, addresses) records DNS and syslog are made from (registry + DHCP leases; the
  fleet's records plug in through :data:`.hosts.HOST_SOURCES`);
* :mod:`.node` — the node side (rsyslog forwarding with a queue, journald, chrony/timesyncd):
  :func:`.node.node_files` for the per-node layer;
* :mod:`.daemon` — finding a daemon (pid, listening sockets), restarting and signalling it;
* :mod:`.manage` — ``render``, ``apply``, ``status`` and layerbootd's refresh when nodes change.

``layerboot services status|render|apply`` is the command line (tools/cmd_services.py); docs/services.md the
reference.
"""
