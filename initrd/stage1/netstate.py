"""What the boot network leaves behind for the booted system: the host name, DNS settings, and a record.

After the net stage, stage1 writes into ``/run/layerboot`` (the /run tmpfs moves into the new root):

- ``net.json`` — the machine-readable record: boot interface, node MAC, server, host name, domain, DNS servers
  and search list, NTP and log servers, and every configured interface with its addresses and leases;
- ``net.env`` — the same scalars as shell assignments (``. /run/layerboot/net.env``) for init scripts;
- ``resolv.conf`` and ``hostname`` — what the boot network says.

Precedence of the values: the command line first (``ip=``'s host name and DNS fields, ``nameserver=``), then the
boot interface's DHCPv4/DHCPv6 answers, then other interfaces'; ``rd.peerdns=0`` drops DNS servers and search
domains learnt from DHCP. Precedence of the files in the new root (:func:`link_into_root`): a layer above the
base that carries ``/etc/resolv.conf`` or ``/etc/hostname`` (a per-node layer, a site layer, a baked capture),
or a symlink there (systemd-resolved's stub, say), wins and is left alone; otherwise (no file, or only the base
image's — debootstrap copies the build host's) the path becomes a symlink to the file in /run/layerboot. A
symlink, not a copy: a ``layerboot capture`` of the node then bakes a pointer that is right on every node, never
one node's name or servers.
"""

from __future__ import annotations

import os

from .console import debug
from .jsonlite import dumps

RUN_DIR = "/run/layerboot"
ROOT_FILES = ("resolv.conf", "hostname")
MAX_NAMESERVERS = 3   # glibc's resolver reads no more


def _unique(values) -> list:  # noqa: ANN001
    return list(dict.fromkeys(v for v in values if v))


def summary(plan, result, server: str = "") -> dict:  # noqa: ANN001 - netcmd.NetPlan, net.NetResult
    """The record of the boot network as a JSON-ready dict (net.json)."""
    from .net import interface_record

    boot = result.boot_interface
    leases = [lease for dev, lease in result.leases if dev == boot] + \
             [lease for dev, lease in result.leases if dev != boot]
    configs = [plan.config_for(boot) or plan.config_for("")] + \
              [c for c in plan.configs if c.device and c.device != boot]
    dns = list(plan.nameservers) + [d for c in configs if c is not None for d in c.dns]
    search: list[str] = []
    if plan.peerdns:
        dns += [d for lease in leases for d in lease.dns]
        search = [s for lease in leases for s in (lease.search or (lease.domain,))]
    hostname = result.hostname
    domain = next((lease.domain for lease in leases if lease.domain), "")
    if not domain and "." in hostname:
        domain = hostname.split(".", 1)[1]
    return {
        "format": 1, "boot_interface": boot, "node_mac": result.node_mac, "server": server,
        "hostname": hostname, "domain": domain, "dns": _unique(dns), "search": _unique(search),
        "ntp": _unique(n for lease in leases for n in lease.ntp),
        "log_servers": _unique(n for lease in leases for n in lease.log_servers),
        "interfaces": [interface_record(name, [lease for dev, lease in result.leases if dev == name])
                       for name in result.links],
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def env_text(record: dict) -> str:
    """Shell assignments for init scripts: lists are space separated."""
    boot = next((i for i in record["interfaces"] if i["name"] == record["boot_interface"]), {})
    values = {
        "BOOT_INTERFACE": record["boot_interface"], "NODE_MAC": record["node_mac"], "SERVER": record["server"],
        "HOSTNAME": record["hostname"], "DOMAIN": record["domain"], "DNS": " ".join(record["dns"]),
        "SEARCH": " ".join(record["search"]), "NTP": " ".join(record["ntp"]),
        "LOG_SERVERS": " ".join(record["log_servers"]), "ADDRESSES": " ".join(boot.get("addresses", [])),
        "GATEWAY": boot.get("gateway", ""), "GATEWAY6": boot.get("gateway6", ""),
    }
    return "".join(f"LAYERBOOT_{key}={_quote(value)}\n" for key, value in values.items())


def resolv_text(record: dict) -> str:
    lines = [f"# written by layerboot stage1 for {record['boot_interface']} (see /run/layerboot/net.json)\n"]
    if record["search"]:
        lines.append(f"search {' '.join(record['search'])}\n")
    lines += [f"nameserver {server}\n" for server in record["dns"][:MAX_NAMESERVERS]]
    return "".join(lines)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def write_run_files(record: dict, run_dir: str = RUN_DIR, etc: str = "/etc") -> list[str]:
    """net.json, net.env, and resolv.conf/hostname when there is something to say; the initramfs' own
    /etc/resolv.conf too (for a server given by name). Returns the names written under ``run_dir``."""
    os.makedirs(run_dir, exist_ok=True)
    _write(f"{run_dir}/net.json", dumps(record, sort_keys=True) + "\n")
    _write(f"{run_dir}/net.env", env_text(record))
    written = ["net.json", "net.env"]
    if record["dns"] or record["search"]:
        _write(f"{run_dir}/resolv.conf", resolv_text(record))
        written.append("resolv.conf")
        try:
            os.makedirs(etc, exist_ok=True)
            _write(f"{etc}/resolv.conf", resolv_text(record))
        except OSError as err:
            debug(f"cannot write {etc}/resolv.conf: {err.strerror}")
    if record["hostname"]:
        _write(f"{run_dir}/hostname", record["hostname"] + "\n")
        written.append("hostname")
    return written


def set_hostname(name: str, proc: str = "/proc/sys/kernel/hostname") -> None:
    """The kernel's host name (it survives switch_root); the booted system may set its own later."""
    if name:
        with open(proc, "w", encoding="ascii") as f:
            f.write(name.split(".")[0] if len(name) > 64 else name)


def _provided_by_overlay(path: str, lowers: list[str]) -> bool:
    """Does a layer above the base (index 1 and up, top first) carry ``path`` (a file, link or whiteout)?"""
    return any(os.path.lexists(f"{lower}/{path}") for lower in reversed(lowers[1:]))


def link_into_root(root: str, lowers: list[str], written: list[str], run_dir: str = RUN_DIR) -> list[str]:
    """Point /etc/resolv.conf and /etc/hostname of the new root at the run files, unless a layer above the base
    or a symlink already provides them (see the module docstring). Returns the paths linked."""
    linked = []
    for name in ROOT_FILES:
        if name not in written:
            continue
        path = f"etc/{name}"
        target = f"{root}/{path}"
        if os.path.islink(target):
            debug(f"/{path} is a symlink to {os.readlink(target)}: left alone")
            continue
        if _provided_by_overlay(path, lowers):
            debug(f"/{path} comes from a layer above the base: left alone")
            continue
        os.makedirs(f"{root}/etc", exist_ok=True)
        tmp = f"{target}.layerboot"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(f"{run_dir}/{name}", tmp)
        os.rename(tmp, target)
        linked.append(f"/{path}")
    return linked
