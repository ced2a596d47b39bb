"""Turning machines into nodes: the hardware facts a discovery boot reports, accepting, cloning, auto-accept rules.

A discovery report (``POST /discover/MAC``, see discovery.py) is checked field by field here
(:func:`check_facts`): every MAC with its kernel name, CPUs, memory, disks, the DMI vendor, product, serial and
UUID. ``nodes accept`` makes a node of a pending machine: its boot NIC becomes the node's first interface and
its DMI ``uuid:serial`` its asset key, so the node claims its own write secret at its next boot. A *clone*
(``nodes clone``, or ``nodes accept`` of a machine whose operator asked for it in the discovery menu) copies an
existing node's record with a new name, new MACs, new static addresses (the next free ones in the same
subnets unless given) and nothing of its credentials: no secret, a new machine id, so new SSH host keys.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.safetext import printable
from layerboot.server.fleet.queries import Fleet
from layerboot.server.fleet.ranges import expand
from layerboot.server.fleet.records import Defaults, FleetNode, Interface, RecordError, check_name
from layerboot.server.nodes import normalize_asset_key, normalize_mac

log = logging.getLogger("layerboot.fleet")

MAX_ITEMS = 64
MAX_TEXT = 128


class FactsError(LayerbootError):
    pass


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT or not all(" " <= c <= "~" for c in value):
        raise FactsError(f"{what} must be printable ASCII of at most {MAX_TEXT} characters")
    return value.strip()


def _count(value: Any, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise FactsError(f"{what} must be a whole number from 0 to {limit}")
    return value


def check_facts(data: Any, mac: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(facts, request) from a discovery report; FactsError naming the first bad field."""
    if not isinstance(data, dict):
        raise FactsError("a discovery report is a JSON object {macs, cpus, cpu_model, memory, disks, dmi, request}")
    unknown = sorted(set(data) - {"macs", "cpus", "cpu_model", "memory", "disks", "dmi", "request"})
    if unknown:
        raise FactsError(f"discovery report: unknown field {unknown[0][:40]!r}")
    macs = data.get("macs", [])
    if not isinstance(macs, list) or len(macs) > MAX_ITEMS:
        raise FactsError(f"'macs' is a list of at most {MAX_ITEMS} {{name, mac}} objects")
    nics = []
    for item in macs:
        if not isinstance(item, dict):
            raise FactsError("'macs' holds {name, mac} objects")
        nics.append({"name": _text(item.get("name"), "macs[].name"), "mac": normalize_mac(_text(item.get("mac"),
                                                                                                  "macs[].mac"))})
    disks = data.get("disks", [])
    if not isinstance(disks, list) or len(disks) > MAX_ITEMS:
        raise FactsError(f"'disks' is a list of at most {MAX_ITEMS} objects")
    checked_disks = []
    for disk in disks:
        if not isinstance(disk, dict):
            raise FactsError("'disks' holds {name, size, model, serial} objects")
        checked_disks.append({"name": _text(disk.get("name"), "disks[].name"),
                              "size": _count(disk.get("size", 0), "disks[].size", 2 ** 53 - 1),
                              "model": _text(disk.get("model"), "disks[].model"),
                              "serial": _text(disk.get("serial"), "disks[].serial")})
    dmi = data.get("dmi", {})
    if not isinstance(dmi, dict) or set(dmi) - {"vendor", "product", "serial", "uuid", "board"}:
        raise FactsError("'dmi' is an object of vendor, product, serial, uuid, board")
    facts = {"macs": nics, "cpus": _count(data.get("cpus", 0), "cpus", 1 << 20),
             "cpu_model": _text(data.get("cpu_model"), "cpu_model"),
             "memory": _count(data.get("memory", 0), "memory", 2 ** 53 - 1), "disks": checked_disks,
             "dmi": {k: _text(dmi.get(k), f"dmi.{k}") for k in ("vendor", "product", "serial", "uuid", "board")}}
    if mac not in {n["mac"] for n in nics}:
        facts["macs"].insert(0, {"name": "", "mac": mac})
    request = data.get("request") or {}
    if not isinstance(request, dict) or set(request) - {"clone_of", "name"}:
        raise FactsError("'request' is an object {clone_of, name}")
    wanted = {k: _text(request.get(k), f"request.{k}").lower() for k in ("clone_of", "name") if request.get(k)}
    for key, value in wanted.items():
        check_name(value, f"request.{key}")
    return facts, wanted


def asset_key_of(facts: Mapping[str, Any]) -> str | None:
    """The asset key a discovered machine claims with (DMI ``uuid:serial``), or None for a placeholder UUID."""
    dmi = facts.get("dmi", {})
    try:
        return normalize_asset_key(f"{dmi.get('uuid', '')}:{dmi.get('serial', '')}")
    except LayerbootError:
        return None


# -- addresses -------------------------------------------------------------------------------------------------
def used_addresses(fleet: Fleet) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    used = set()
    for node in fleet.nodes():
        for iface in node.interfaces:
            for address in (iface.static4, iface.static6):
                if address is not None:
                    used.add(address.ip)
    return used


def next_free(start: str, used: set, *, after: bool = False, gateway: str = "") -> str:
    """The first address from ``start`` (``ADDRESS/PREFIX``; past it with ``after``) in its subnet that no node
    has and that is not the gateway; an error when the subnet is full."""
    iface = ipaddress.ip_interface(start)
    net = iface.network
    candidate = iface.ip + 1 if after else iface.ip
    taken = used | ({ipaddress.ip_address(gateway)} if gateway else set())
    while candidate in net:
        reserved = net.version == 4 and net.prefixlen < 31 and candidate in (net.network_address,
                                                                            net.broadcast_address)
        if candidate not in taken and not reserved:
            used.add(candidate)
            return f"{candidate}/{net.prefixlen}"
        candidate += 1
    raise LayerbootError(f"no free address left in {net} after {iface.ip}", hint="give the address yourself")


# -- clones ----------------------------------------------------------------------------------------------------
def clone_node(fleet: Fleet, source: FleetNode, name: str, macs: Sequence[str], *, ipv4: str = "", ipv6: str = "",
               asset_key: str | None = None) -> FleetNode:
    """``source``'s record for a new node: new name, its NICs' MACs from ``macs`` (in the order of ``source``'s
    NICs), its first device's addresses ``ipv4``/``ipv6`` when given, every other static address the next free
    one after ``source``'s; no machine id (a new one, so new host keys) and only the asset key given."""
    check_name(name)
    nics = [i for i in source.interfaces if i.mac]
    if len(macs) != len(nics):
        raise RecordError(f"{source.name} has {len(nics)} NIC(s) ({', '.join(i.device for i in nics)}): give as "
                          f"many MACs, in that order (--mac, repeated), not {len(macs)}")
    new_macs = iter(normalize_mac(m) for m in macs)
    used = used_addresses(fleet)
    interfaces = []
    first = True
    for iface in source.interfaces:
        changes: dict[str, str] = {}
        if iface.mac:
            changes["mac"] = next(new_macs)
        for field, given, address in (("ipv4", ipv4, iface.static4), ("ipv6", ipv6, iface.static6)):
            if address is None:
                continue
            gateway = iface.gateway if field == "ipv4" else iface.gateway6
            changes[field] = given if first and given else next_free(str(address), used, after=True, gateway=gateway)
        if iface.static4 is not None or iface.static6 is not None:
            first = False
        interfaces.append(replace(iface, **changes))
    key = next((i.mac for i in interfaces if i.mac), "")
    return FleetNode(name=name, mac=key, cluster=source.cluster, groups=source.groups, interfaces=tuple(interfaces),
                     own=source.own, machine_id="", asset_key=asset_key)


# -- accepting -------------------------------------------------------------------------------------------------
def node_for_discovery(fleet: Fleet, record: Mapping[str, Any], *, name: str, profile: str = "", cluster: str = "",
                       groups: Sequence[str] = (), ipv4: str = "", gateway: str = "", clone_of: str = "") -> FleetNode:
    """The node a pending machine becomes (not saved)."""
    mac = record["mac"]
    facts = record["facts"]
    asset_key = asset_key_of(facts)
    if clone_of:
        source = fleet.get(clone_of)
        nics = [i for i in source.interfaces if i.mac]
        by_name = {n["name"]: n["mac"] for n in facts["macs"] if n["name"]}
        macs = [mac]
        for iface in nics[1:]:
            found = by_name.get(iface.device)
            if not found or found == mac:
                raise LayerbootError(f"{source.name}'s NIC {iface.device} has no counterpart among the machine's NICs "
                                     f"({', '.join(sorted(by_name)) or 'none reported'})",
                                     hint="clone it by hand: layerboot nodes clone SRC NAME --mac ... --mac ...")
            macs.append(found)
        return clone_node(fleet, source, name, macs, ipv4=ipv4, asset_key=asset_key)
    device = next((n["name"] for n in facts["macs"] if n["mac"] == mac and n["name"]), "") or "eth0"
    iface = Interface(device=device, mac=mac, ipv4=ipv4, gateway=gateway)
    return FleetNode(name=check_name(name), mac=mac, cluster=cluster, groups=tuple(groups), interfaces=(iface,),
                     own=Defaults(profile=profile).check(f"node {name}"), asset_key=asset_key)


def accept(fleet: Fleet, mac: str, *, force: bool = False, check_profile: Any = None, **choices: Any) -> FleetNode:
    """Make a node of pending machine ``mac`` (``choices``: see :func:`node_for_discovery`); the machine's next
    poll tells it, and it reboots into its own boot."""
    record = fleet.discovery(mac)
    if record is None:
        raise LayerbootError(f"no machine {normalize_mac(mac)} is pending", hint="see 'layerboot nodes pending'")
    if record["state"] == "accepted":
        raise LayerbootError(f"{record['mac']} was accepted already, as node {record['node']}")
    if record["conflict"] and not force:
        raise LayerbootError(f"{record['mac']} sent conflicting reports: {record['conflict']}",
                             hint="check the machine (another one may pretend to be it), then accept with --force")
    node = node_for_discovery(fleet, record, **choices)
    saved = fleet.save([node], check_profile=check_profile)[0]
    fleet.set_discovery_state(record["mac"], "accepted", node=saved.name, message="accepted by the admin")
    log.info("discovered machine %s accepted as node %s", record["mac"], saved.name)
    return saved


# -- auto-accept rules -----------------------------------------------------------------------------------------
def check_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule: ``macs`` (FIRST-LAST) or ``serials`` (a list), ``names`` (a host list to take names from),
    ``profile``/``cluster``/``groups``, optionally ``ipv4`` (ADDRESS/PREFIX to count up from) and ``gateway``."""
    if bool(rule.get("macs")) == bool(rule.get("serials")):
        raise LayerbootError("an enrollment rule matches either a MAC range (--macs FIRST-LAST) or a list of DMI "
                             "serials (--serials)")
    if rule.get("macs"):
        first, sep, last = rule["macs"].partition("-")
        if rule["macs"].count("-") != 1:
            raise LayerbootError(f"--macs {printable(rule['macs'][:60])!r} is not FIRST-LAST",
                                 hint="write the MACs with colons: 52:54:00:00:01:00-52:54:00:00:01:ff")
        first, last = normalize_mac(first), normalize_mac(last)
        if first > last:
            raise LayerbootError(f"--macs {first}-{last}: the first MAC is above the last")
        rule["macs"] = f"{first}-{last}"
    if not rule.get("names") or not expand(rule["names"]):
        raise LayerbootError("an enrollment rule needs --names (where new nodes' names come from, e.g. n[101-200])")
    for name in expand(rule["names"])[:1]:
        check_name(name)
    if rule.get("ipv4"):
        Interface(device="eth0", ipv4=rule["ipv4"], gateway=rule.get("gateway", ""))
    return rule


def matching_rule(fleet: Fleet, facts: Mapping[str, Any], mac: str) -> tuple[int, dict[str, Any]] | None:
    serial = facts.get("dmi", {}).get("serial", "")
    for rule_id, rule in fleet.rules():
        if rule.get("macs"):
            first, last = rule["macs"].split("-", 1)
            if first <= mac <= last:
                return rule_id, rule
        elif serial and serial in rule.get("serials", []):
            taken = fleet.db.scalar("SELECT count(*) FROM nodes WHERE asset_key LIKE ?", (f"%:{serial.lower()}",))
            if not taken:
                return rule_id, rule
    return None


def auto_accept(fleet: Fleet, record: Mapping[str, Any]) -> FleetNode | None:
    """Accept a fresh, conflict-free discovery when a rule matches it; None otherwise."""
    if record["state"] != "pending" or record["conflict"] or asset_key_of(record["facts"]) is None:
        return None
    found = matching_rule(fleet, record["facts"], record["mac"])
    if found is None:
        return None
    rule_id, rule = found
    taken = {n.name for n in fleet.nodes()}
    name = next((n for n in expand(rule["names"]) if n not in taken), None)
    if name is None:
        log.warning("enrollment rule %d matches %s but has no free name left in %s", rule_id, record["mac"],
                    rule["names"])
        return None
    ipv4 = next_free(rule["ipv4"], used_addresses(fleet), gateway=rule.get("gateway", "")) if rule.get("ipv4") \
        else ""
    node = node_for_discovery(fleet, record, name=name, profile=rule.get("profile", ""),
                              cluster=rule.get("cluster", ""), groups=rule.get("groups", []), ipv4=ipv4,
                              gateway=rule.get("gateway", ""))
    saved = fleet.save([node])[0]
    fleet.set_discovery_state(record["mac"], "accepted", node=saved.name, message=f"accepted by rule {rule_id}")
    log.info("discovered machine %s accepted as node %s by enrollment rule %d", record["mac"], saved.name, rule_id)
    return saved
