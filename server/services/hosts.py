"""The (name, addresses) records DNS and syslog are made from.

A record is a node's name (one DNS label) and its addresses. :data:`HOST_SOURCES` lists the functions that
yield them, in order; :func:`host_records` runs them, checks every name and address, and keeps the first record
of each name and of each MAC (so a source placed before another wins for the nodes it knows). Today's only
source is :func:`registry_and_leases`: every registered node, named ``node-<mac without colons>``, with the
addresses of its live DHCP leases from 'layerboot pxe'. Fleet records (named nodes with static addresses) plug
in by inserting their own source at the front::

    from layerboot.server.services import hosts
    hosts.HOST_SOURCES.insert(0, lambda site: (hosts.HostRecord(n.name, n.addresses, n.mac) for n in ...))

The DNS hosts file (:func:`hosts_text`) and rsyslog's node table (:func:`node_table`) are both made from the
same list, so a node's log directory is always its DNS name.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerboot.safetext import printable

if TYPE_CHECKING:
    from layerboot.server.services.base import Site

log = logging.getLogger("layerboot.services")

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")     # one DNS label (RFC 1123), lowercase
RESERVED_NAMES = ("unregistered",)      # the syslog directory of senders that are no node


@dataclass(frozen=True)
class HostRecord:
    name: str                           # one DNS label: the node's host name and its log directory
    addresses: tuple[str, ...]          # IPv4 and IPv6 addresses, as text
    mac: str = ""                       # the node's MAC in the registry, when it has one


HostSource = Callable[["Site"], Iterable[HostRecord]]


def default_name(mac: str) -> str:
    """The name a registered node has until it is given one: ``node-525400123456``."""
    return "node-" + mac.replace(":", "").lower()


@dataclass(frozen=True)
class Lease:
    mac: str
    address: str
    expires: int                        # Unix time; 0: never


def read_leases(path: Path, *, now: float | None = None) -> list[Lease]:
    """The live IPv4 leases of a dnsmasq lease file (``EXPIRY MAC ADDRESS HOSTNAME CLIENTID`` per line);
    unreadable lines, IPv6 (``duid``) lines and expired leases are skipped. A missing file has none."""
    now = time.time() if now is None else now
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    leases = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[0].isdigit():
            continue
        expires, mac, address = int(words[0]), words[1].lower(), words[2]
        if expires and expires < now:
            continue
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            continue
        leases.append(Lease(mac, address, expires))
    return leases


def lease_file(site: "Site") -> Path:
    """Where 'layerboot pxe' keeps its leases by default (``<store>/state/pxe/dnsmasq.leases``)."""
    return site.paths.state / "pxe" / "dnsmasq.leases"


def registry_and_leases(site: "Site") -> Iterator[HostRecord]:
    """Every registered node, with the addresses of its DHCP leases (none yet: a name without an address)."""
    if site.registry is None:
        return
    by_mac: dict[str, list[str]] = {}
    for lease in read_leases(lease_file(site)):
        by_mac.setdefault(lease.mac, []).append(lease.address)
    for node in site.registry.all():
        yield HostRecord(default_name(node.mac), tuple(dict.fromkeys(by_mac.get(node.mac, ()))), node.mac)


HOST_SOURCES: list[HostSource] = [registry_and_leases]


def check_record(record: HostRecord) -> HostRecord | None:
    """The record with checked, normalised addresses; None (and a warning) for a name that cannot be used."""
    if not NAME_RE.fullmatch(record.name) or record.name in RESERVED_NAMES:
        log.warning("node name %r is not a usable host name; left out of DNS and syslog", printable(record.name))
        return None
    addresses = []
    for text in record.addresses:
        try:
            addresses.append(str(ipaddress.ip_address(text)))
        except ValueError:
            log.warning("node %s: %r is not an IP address; left out", record.name, printable(str(text)[:60]))
    return HostRecord(record.name, tuple(dict.fromkeys(addresses)), record.mac)


def host_records(site: "Site", sources: Iterable[HostSource] | None = None) -> list[HostRecord]:
    """Every source's records, checked; the first record of a name, of a MAC and of an address wins. Sorted by
    name, so the files made from them only change when the records do."""
    seen_names: set[str] = set()
    seen_macs: set[str] = set()
    seen_addresses: dict[str, str] = {}
    records = []
    for source in HOST_SOURCES if sources is None else sources:
        for raw in source(site):
            record = check_record(raw)
            if record is None or record.name in seen_names or (record.mac and record.mac in seen_macs):
                continue
            taken = [a for a in record.addresses if a in seen_addresses]
            for address in taken:
                log.warning("address %s of node %s is already node %s's; left out", address, record.name,
                            seen_addresses[address])
            record = HostRecord(record.name, tuple(a for a in record.addresses if a not in seen_addresses),
                                record.mac)
            seen_names.add(record.name)
            if record.mac:
                seen_macs.add(record.mac)
            seen_addresses.update({a: record.name for a in record.addresses})
            records.append(record)
    return sorted(records, key=lambda r: r.name)


def hosts_text(records: Iterable[HostRecord], domain: str) -> str:
    """/etc/hosts syntax: ``ADDRESS NAME.DOMAIN NAME`` per address (dnsmasq answers both, and the reverse)."""
    from layerboot.server.services.base import HEADER, render
    return render("hosts.j2", header=HEADER.format(service="dns"), records=list(records), domain=domain)


def node_table(records: Iterable[HostRecord]) -> str:
    """rsyslog's lookup table (JSON): sender address -> node name; an unknown sender looks up ""."""
    table = [{"index": address, "value": record.name} for record in records for address in record.addresses]
    document = {"version": 1, "nomatch": "", "type": "string", "table": sorted(table, key=lambda e: e["index"])}
    return json.dumps(document, indent=1, sort_keys=True) + "\n"
