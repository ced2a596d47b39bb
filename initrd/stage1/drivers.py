"""Load the drivers the hardware asks for: every device's ``modalias`` under /sys, matched against the image's
``modules.alias``, loaded with one ``busybox modprobe -a`` per round.

Without udev nobody loads drivers for us. Each device the kernel knows about (PCI functions, virtio devices,
SCSI LUNs, USB interfaces, ACPI and platform devices, ...) has a ``modalias`` file; depmod wrote the aliases of
the modules in the initramfs to ``modules.alias`` (``alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e``).
Matching is done here, not by busybox: busybox's modprobe turns '-' into '_' in the names it is given, so an
alias like ``scsi:t-0x00`` would never match, and ``fnmatch`` would import ``re`` into PID 1. Patterns only use
``*``, ``?`` and ``[...]``; a literal prefix check rejects almost every pattern before the matcher runs.

Loading a driver can create new devices (virtio_pci -> virtio0 -> virtio_net; ahci -> SCSI disks -> sd_mod), so
the scan repeats until a round finds nothing new; a later round reads only the devices that appeared since. A
driver bound after the last round (an AHCI port still resetting) is loaded by whoever waits for the device:
stage1 loads ``sd_mod`` itself when it needs a disk. The modules stage1 always needs go into the first round's
``modprobe``: one child fewer (a busybox start is 7-10 ms under TCG, bench/README.md).

``modprobe.blacklist=a,b`` on the kernel command line (kmod's syntax) keeps those modules from being loaded.
Every NIC's driver is loaded, not only the boot interface's: the network stage then sees all interfaces.
"""

from __future__ import annotations

import os

from .console import BUSYBOX, StageError, debug, say, spawn

SYS_BUS = "/sys/bus"
ROUNDS = 4
# PCI classes whose devices must not go unnoticed without a driver (storage 01, network 02).
WATCHED_CLASSES = {"0x01": "storage", "0x02": "network"}


def kernel_release() -> str:
    return os.uname().release


def read_aliases(path: str) -> dict[str, list[tuple[str, str, str]]]:
    """modules.alias as {bus prefix ("pci"): [(literal prefix, pattern, module)]}; missing file -> {}."""
    table: dict[str, list[tuple[str, str, str]]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return table
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or parts[0] != "alias":
            continue
        pattern, module = parts[1], parts[2]
        cut = len(pattern)
        for special in "*?[":
            at = pattern.find(special)
            if at != -1 and at < cut:
                cut = at
        bus = pattern.split(":", 1)[0] if ":" in pattern[:cut] else ""
        table.setdefault(bus, []).append((pattern[:cut], pattern, module))
    return table


def glob_match(pattern: str, text: str) -> bool:
    """Shell-style match of the whole ``text``: ``*``, ``?`` and ``[...]`` (with ranges and ``!``/``^``)."""
    p = t = 0
    star_p = star_t = -1
    while t < len(text):
        if p < len(pattern):
            ch = pattern[p]
            if ch == "*":
                star_p, star_t = p, t
                p += 1
                continue
            if ch == "[":
                end = pattern.find("]", p + 2)
                if end != -1:
                    body = pattern[p + 1:end]
                    negate = body[:1] in ("!", "^")
                    if negate:
                        body = body[1:]
                    hit = False
                    i = 0
                    while i < len(body):
                        if i + 2 < len(body) and body[i + 1] == "-":
                            hit = hit or body[i] <= text[t] <= body[i + 2]
                            i += 3
                        else:
                            hit = hit or body[i] == text[t]
                            i += 1
                    if hit != negate:
                        p, t = end + 1, t + 1
                        continue
                elif ch == text[t]:
                    p, t = p + 1, t + 1
                    continue
            elif ch == "?" or ch == text[t]:
                p, t = p + 1, t + 1
                continue
        if star_p == -1:
            return False
        p, star_t = star_p + 1, star_t + 1
        t = star_t
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def modules_for(aliases: dict[str, list[tuple[str, str, str]]], modalias: str) -> list[str]:
    """Every module whose alias matches ``modalias`` (several may: 8139cp and 8139too both claim 10ec:8139)."""
    bus = modalias.split(":", 1)[0] if ":" in modalias else ""
    found = []
    for prefix, pattern, module in (*aliases.get(bus, ()), *aliases.get("", ())):
        if modalias.startswith(prefix) and module not in found and glob_match(pattern, modalias):
            found.append(module)
    return found


def device_modaliases(sys_bus: str = SYS_BUS, *, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """{device path: modalias} for every device on every bus, but those in ``skip`` (read in an earlier round)."""
    found: dict[str, str] = {}
    try:
        buses = os.listdir(sys_bus)
    except OSError:
        return found
    for bus in buses:
        devices = f"{sys_bus}/{bus}/devices"
        try:
            names = os.listdir(devices)
        except OSError:
            continue
        for name in names:
            if f"{bus}/{name}" in skip:
                continue
            try:
                with open(f"{devices}/{name}/modalias", encoding="ascii", errors="replace") as f:
                    alias = f.read().strip()
            except OSError:
                continue
            if alias:
                found[f"{bus}/{name}"] = alias
    return found


def blacklisted(cmdline: str) -> set[str]:
    """Module names from ``modprobe.blacklist=a,b`` (any number of times) on the kernel command line."""
    names: set[str] = set()
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == "modprobe.blacklist":
            names.update(n.replace("-", "_") for n in value.split(",") if n)
    return names


def unclaimed_devices(sys_bus: str = SYS_BUS) -> list[tuple[str, str, str]]:
    """PCI storage and network devices that no driver bound: (address, kind, modalias)."""
    found = []
    pci = f"{sys_bus}/pci/devices"
    try:
        names = sorted(os.listdir(pci))
    except OSError:
        return found
    for name in names:
        try:
            with open(f"{pci}/{name}/class", encoding="ascii") as f:
                kind = WATCHED_CLASSES.get(f.read().strip()[:4])
        except OSError:
            continue
        if kind and not os.path.exists(f"{pci}/{name}/driver"):
            try:
                with open(f"{pci}/{name}/modalias", encoding="ascii") as f:
                    alias = f.read().strip()
            except OSError:
                alias = "?"
            found.append((name, kind, alias))
    return found


def load_hardware_drivers(*, always: tuple[str, ...] = (), sys_bus: str = SYS_BUS,
                          alias_file: str | None = None, cmdline: str = "") -> list[str]:
    """Load ``always`` plus the drivers for every device present; returns the hardware drivers asked for, in order.

    A failure to load ``always`` stops the boot; a hardware driver that fails to load is reported and skipped
    (the device may still work through another driver, or not be needed). ``always`` shares the first round's
    ``modprobe``; only when that fails is it tried alone, to tell whose failure it was.
    """
    if alias_file is None:
        alias_file = f"/lib/modules/{kernel_release()}/modules.alias"
    aliases = read_aliases(alias_file)
    skip = blacklisted(cmdline)
    requested: list[str] = []
    seen: set[str] = set()      # modaliases matched already
    scanned: set[str] = set()   # device paths read already
    pending = always
    for _ in range(ROUNDS):
        wanted: list[str] = []
        found = device_modaliases(sys_bus, skip=scanned)
        scanned.update(found)
        for device, alias in sorted(found.items()):
            if alias in seen:
                continue
            seen.add(alias)
            for module in modules_for(aliases, alias):
                if module in skip:
                    debug(f"{device}: {module} skipped (modprobe.blacklist)")
                elif module not in requested and module not in wanted:
                    debug(f"{device} ({alias}): {module}")
                    wanted.append(module)
        if pending or wanted:
            code, output = spawn([BUSYBOX, "modprobe", "-a", *pending, *wanted])
            if code and pending:
                _load_always(pending)
            if code and wanted:
                say(f"drivers: modprobe {' '.join(wanted)}: {output or 'status ' + str(code)}")
            pending = ()
        if not wanted:
            break
        requested += wanted
    if requested:
        say(f"drivers: {' '.join(requested)}")
    for address, kind, alias in unclaimed_devices(sys_bus):
        say(f"drivers: no driver for {kind} device {address} ({alias}) in this initramfs; "
            "add one with 'layerboot initrd build --add-drivers NAME'")
    return requested


def _load_always(names: tuple[str, ...]) -> None:
    """Load ``names`` alone (after a combined modprobe failed); StageError when they do not load."""
    code, output = spawn([BUSYBOX, "modprobe", "-a", *names])
    if code:
        raise StageError(f"loading kernel modules {', '.join(names)} failed: {output or code}")
