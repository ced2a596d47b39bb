"""The discovery boot (``layerboot.discover``): report this unknown machine's hardware, wait, reboot as itself.

layerbootd gives an unregistered MAC this boot when ``server.unknown_mac = "discover"`` (server/fleet). After the
net stage stage1 reads the machine's facts from sysfs and /proc — every NIC's name and MAC, CPUs, memory, disks
(size, model, serial), DMI vendor, product, serial, UUID and board — and posts them to
``<server>/discover/<mac>`` (anonymous, no credential). From the discovery menu the operator may have asked to
become a clone of a node (``layerboot.clone=`` and ``layerboot.name=``, URI-encoded by iPXE): sent along as a
request, which only an admin acts on. Then it asks ``GET /discover/<mac>`` every ``poll`` seconds (the server
says how often) and prints a line every minute, until:

* ``accepted`` — the admin ran ``layerboot nodes accept`` (or a rule did): reboot; the next PXE boot is the
  node's own (its name, addresses, node layer), and its DMI identity is its asset key;
* ``rejected`` — power off.

Network errors and refusals (429, a full pending list) are retried, never fatal: a machine waits until someone
looks at it. Nothing is mounted and nothing is written to the machine's disks.
"""

from __future__ import annotations

import os
import time

from .console import say

DMI = "/sys/class/dmi/id"
NET = "/sys/class/net"
BLOCK = "/sys/block"
SKIP_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd")
REPORT_EVERY = 60.0


def _read(path: str, limit: int = 256) -> str:
    try:
        with open(path, "rb") as f:
            value = f.read(limit).decode("ascii", "replace")
    except OSError:
        return ""
    return "".join(c for c in value if " " <= c <= "~").strip()[:128]


def unquote(text: str) -> str:
    """iPXE's ``${x:uristring}`` back to text (%XX escapes)."""
    raw = text.encode("ascii", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        pair = raw[i + 1:i + 3]
        if raw[i] == 0x25 and len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair):
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace").strip()


def _nics(net: str = NET) -> list[dict]:
    nics = []
    for name in sorted(os.listdir(net)) if os.path.isdir(net) else []:
        if name == "lo" or not os.path.exists(f"{net}/{name}/device"):
            continue                                  # virtual devices have no device link
        mac = _read(f"{net}/{name}/address").lower()
        if mac and mac != "00:00:00:00:00:00":
            nics.append({"name": name, "mac": mac})
    return nics


def _disks(block: str = BLOCK) -> list[dict]:
    disks = []
    for name in sorted(os.listdir(block)) if os.path.isdir(block) else []:
        if name.startswith(SKIP_DISKS):
            continue
        size = _read(f"{block}/{name}/size")
        serial = _read(f"{block}/{name}/device/serial") or _read(f"{block}/{name}/serial")
        disks.append({"name": name, "size": int(size) * 512 if size.isdigit() else 0,
                      "model": _read(f"{block}/{name}/device/model"), "serial": serial})
    return disks


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()[:128]
    except OSError:
        pass
    return ""


def _memory(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def facts(*, dmi: str = DMI, net: str = NET, block: str = BLOCK) -> dict:
    """What the discovery report says about this machine."""
    return {"macs": _nics(net), "cpus": os.cpu_count() or 0, "cpu_model": _cpu_model(), "memory": _memory(),
            "disks": _disks(block),
            "dmi": {"vendor": _read(f"{dmi}/sys_vendor"), "product": _read(f"{dmi}/product_name"),
                    "serial": _read(f"{dmi}/product_serial"), "uuid": _read(f"{dmi}/product_uuid").lower(),
                    "board": _read(f"{dmi}/board_name")}}


def _exchange(method: str, url: str, document: object, timeout: float) -> tuple[int, dict]:
    from .http import request
    from .jsonlite import dumps, loads

    body = dumps(document).encode("utf-8") if document is not None else b""
    response = request(method, url, body=body, timeout=timeout,
                       headers={"Accept": "application/json", **({"Content-Type": "application/json"} if body else {})})
    try:
        status, text = response.status, response.read(8192).decode("utf-8", "replace")
    finally:
        response.close()
    data = loads(text) if text.strip().startswith("{") else {}
    return status, data if isinstance(data, dict) else {}


def discover(server: str, mac: str, *, clone: str = "", name: str = "", timeout: float = 10.0,
             sleep=time.sleep, clock=time.monotonic, rounds: int = -1, report: dict | None = None) -> str:  # noqa: ANN001
    """Report and wait; returns "accepted" or "rejected" (for tests: ``rounds`` stops after that many questions
    with "waiting", ``report`` replaces this machine's facts)."""
    from .console import StageError

    report = dict(report or facts())
    request = {k: unquote(v) for k, v in (("clone_of", clone), ("name", name)) if v and unquote(v)}
    if request:
        report["request"] = request
    url = f"{server}/discover/{mac}"
    dmi = report["dmi"]
    say(f"discovery: {mac} is not registered; reporting {len(report['macs'])} NIC(s), {report['cpus']} CPU(s), "
        f"{report['memory'] >> 20} MB, {len(report['disks'])} disk(s), DMI {dmi['vendor']} {dmi['product']} "
        f"serial {dmi['serial'] or '-'}" + (f"; asking to become {request.get('name', '?')}, a clone of "
                                            f"{request.get('clone_of', '?')}" if request else ""))
    reported = False
    poll = 10.0
    last_line = clock()
    started = clock()
    while rounds != 0:
        try:
            if reported:
                status, answer = _exchange("GET", url, None, timeout)
            else:
                status, answer = _exchange("POST", url, report, timeout)
            state = answer.get("state", "")
            if isinstance(answer.get("poll"), int) and 1 <= answer["poll"] <= 3600:
                poll = float(answer["poll"])
            if status == 200 and state in ("pending", "accepted", "rejected"):
                reported = True
            elif status == 200 and state == "unknown":
                reported = False                      # forgotten by the server (expired): report again
            elif status not in (429, 503):
                say(f"discovery: the server answered {status} {answer.get('error', '')}".rstrip())
            if state in ("accepted", "rejected"):
                say(f"discovery: {mac} was {state}" + (f" as node {answer['node']}" if answer.get("node") else ""))
                return state
        except (StageError, OSError, ValueError) as err:
            say(f"discovery: no answer from {server} ({err}); trying again")
        if clock() - last_line >= REPORT_EVERY:
            say(f"discovery: waiting {int(clock() - started)} s to be accepted (on the server: layerboot nodes "
                f"pending, then layerboot nodes accept {mac} --name NAME --profile PROFILE)")
            last_line = clock()
        sleep(poll)
        rounds -= 1
    return "waiting"
