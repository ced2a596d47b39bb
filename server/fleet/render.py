"""The files of a node's per-node layer, rendered from Jinja2 templates with the node's, groups' and cluster's data.

Templates are files named like their target with ``.j2`` added (``etc/hosts.j2`` -> ``/etc/hosts``), looked up in
the directories of ``fleet.template_dirs``, then the store's ``templates/``, then layerboot's own defaults
(package data: server/fleet/templates). In a directory, ``groups/GROUP/...`` applies to the members of that
group, ``clusters/CLUSTER/...`` to a cluster's, ``profiles/PROFILE/...`` to the nodes booting that profile.
For one target the most specific template wins: the node's groups (its last group first), then its cluster,
then its profile, then a plain one (directories in order), then layerboot's. A template whose name holds
``@device@`` is rendered once per network device (the variable ``device``); a template whose output is empty
(whitespace only) writes no file; a first line ``{# mode: 0600 #}`` sets the file's mode (default 0644).

Besides templates, every node layer carries the node's SSH host keys (``/etc/ssh/ssh_host_*_key``, 0600, and
``.pub``) and ``/etc/layerboot/node.json`` (what layerboot knows of the node, without vars). The variables
templates get are listed in docs/nodes.md ("Templates"). Rendering is deterministic: the same inputs give the
same bytes, so an unchanged node keeps its layer and its signed manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.safetext import printable
from layerboot.server.fleet.hostkeys import HostKey
from layerboot.server.fleet.netargs import boot_device, is_address, resolve_servers
from layerboot.server.fleet.records import Effective, Interface

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
DEVICE_MARK = "@device@"
SUFFIX = ".j2"
MODE_RE = re.compile(r"\{#-?\s*mode:\s*(0?[0-7]{3,4})\s*-?#\}")
PART_RE = re.compile(r"[A-Za-z0-9@_+.,=-]+")
SCOPES = ("groups", "clusters", "profiles")
PRIVATE_DIRS = {"root": 0o700, "root/.ssh": 0o700}
MAX_TEXT = 65536                  # files bigger than this are indexed without their text (for diffs)


class RenderError(LayerbootError):
    pass


@dataclass(frozen=True)
class RenderedFile:
    path: str                      # relative, no leading '/'
    mode: int
    data: bytes
    secret: bool = False           # private keys: never shown, never indexed with their text
    source: str = ""               # the template it came from, or "generated"


@dataclass(frozen=True)
class Tree:
    files: tuple[RenderedFile, ...]

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.mode:o}\0{hashlib.sha256(f.data).hexdigest()}\n".encode())
        return h.hexdigest()

    def index(self) -> dict[str, dict[str, Any]]:
        """What the database keeps for ``nodes render --diff``: mode, hash and (not for secrets) the text."""
        out = {}
        for f in self.files:
            text = None
            if not f.secret and len(f.data) <= MAX_TEXT:
                try:
                    text = f.data.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
            out[f.path] = {"mode": f"{f.mode:04o}", "sha256": hashlib.sha256(f.data).hexdigest(), "text": text,
                           "secret": f.secret, "source": f.source}
        return out


@dataclass(frozen=True)
class Inputs:
    """Everything a node's files depend on."""

    node: Effective
    members: tuple[Effective, ...]          # its cluster's nodes (itself included); just itself without a cluster
    host_keys: tuple[HostKey, ...]
    base: dict[str, bool]                   # probe.probe_chain of the chain it boots
    server_host: str = ""
    server_url: str = ""
    template_dirs: tuple[Path, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


# -- finding templates -----------------------------------------------------------------------------------------
def _names(directory: Path) -> set[str]:
    """Template names under ``directory`` (relative paths ending in .j2), scope directories excluded at top."""
    found = set()
    if not directory.is_dir():
        return found
    for root, dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in SCOPES]
        for name in files:
            if name.endswith(SUFFIX):
                rel = (rel_root / name).as_posix()
                _check_name(rel, directory)
                found.add(rel)
    return found


def _check_name(rel: str, directory: Path) -> None:
    parts = rel.split("/")
    if any(p in (".", "..") or not PART_RE.fullmatch(p) for p in parts) or rel.startswith("/"):
        raise RenderError(f"template {directory / rel}: its path may hold only letters, digits and @_+.,=- "
                          "(it names the file it writes)")


def find_templates(dirs: tuple[Path, ...], eff: Effective) -> dict[str, Path]:
    """{template name: the file that renders it} for this node (see the module doc for the order)."""
    scoped: list[tuple[str, str]] = [("groups", g) for g in reversed(eff.node.groups)]
    if eff.node.cluster:
        scoped.append(("clusters", eff.node.cluster))
    scoped.append(("profiles", eff.profile))
    candidates: list[Path] = [d / scope / name for scope, name in scoped for d in dirs] + list(dirs)
    chosen: dict[str, Path] = {}
    for base in [*candidates, PACKAGE_TEMPLATES]:
        for name in sorted(_names(base)):
            chosen.setdefault(name, base / name)
    return dict(sorted(chosen.items()))


# -- rendering -------------------------------------------------------------------------------------------------
_COMPILED: dict[tuple[str, int, int], Any] = {}


def _environment() -> Any:
    import jinja2
    env = globals().get("_ENV")
    if env is None:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                                 lstrip_blocks=True, autoescape=False)
        globals()["_ENV"] = env
    return env


def _template(path: Path) -> tuple[Any, int]:
    import jinja2
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key in _COMPILED:
            return _COMPILED[key]
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RenderError(f"cannot read template {path}: {getattr(err, 'strerror', None) or err}") from None
    first = source.split("\n", 1)[0]
    match = MODE_RE.search(first)
    mode = int(match.group(1), 8) if match else 0o644
    if mode & ~0o777:
        raise RenderError(f"template {path}: mode {match.group(1) if match else ''} is not a file mode")
    try:
        compiled = _environment().from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise RenderError(f"template {path}, line {err.lineno}: {err.message}") from None
    if len(_COMPILED) > 512:
        _COMPILED.clear()
    _COMPILED[key] = (compiled, mode)
    return compiled, mode


def _render(path: Path, context: dict[str, Any]) -> str:
    import jinja2
    template, _ = _template(path)
    try:
        return template.render(context)
    except jinja2.TemplateError as err:
        line = getattr(err, "lineno", None)
        raise RenderError(f"template {path}{f', line {line}' if line else ''}: {err}",
                          hint="the variables templates get are listed in docs/nodes.md (Templates)") from None
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as err:
        raise RenderError(f"template {path}: {type(err).__name__}: {printable(str(err)[:200])}") from None


def render(inputs: Inputs) -> Tree:
    """The node's files: templates, host keys and node.json."""
    context = template_context(inputs)
    files: dict[str, RenderedFile] = {}
    for name, path in find_templates(inputs.template_dirs, inputs.node).items():
        target = name[:-len(SUFFIX)]
        _, mode = _template(path)
        if DEVICE_MARK in target:
            jobs = [(target.replace(DEVICE_MARK, d["name"]), {**context, "device": d}) for d in context["devices"]]
        else:
            jobs = [(target, context)]
        for rel, values in jobs:
            text = _render(path, values)
            if text.strip():
                files[rel] = RenderedFile(rel, mode, text.encode("utf-8"), source=str(path))
    node = inputs.node
    for key in inputs.host_keys:
        files[f"etc/ssh/{key.filename}"] = RenderedFile(f"etc/ssh/{key.filename}", 0o600, key.private, secret=True,
                                                        source="generated")
        files[f"etc/ssh/{key.filename}.pub"] = RenderedFile(
            f"etc/ssh/{key.filename}.pub", 0o644, f"{key.public} root@{node.name}\n".encode(), source="generated")
    info = {k: v for k, v in context["node"].items() if k != "vars"} | {"services": context["services"]}
    files["etc/layerboot/node.json"] = RenderedFile("etc/layerboot/node.json", 0o644,
                                                    (json.dumps(info, indent=1, sort_keys=True) + "\n").encode(),
                                                    source="generated")
    return Tree(tuple(files[p] for p in sorted(files)))


# -- the variables ---------------------------------------------------------------------------------------------
def _bond_options(text: str) -> dict[str, str]:
    from layerboot.initrd.stage1.netcmd import BOND_MODES
    options = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    if "mode" in options:
        options["mode"] = BOND_MODES.get(options["mode"], options["mode"])
    return options


def _addresses(iface: Interface | None) -> dict[str, Any]:
    a4 = iface.static4 if iface else None
    a6 = iface.static6 if iface else None
    return {"ipv4": str(a4) if a4 else "", "address4": str(a4.ip) if a4 else "",
            "prefix4": a4.network.prefixlen if a4 else 0, "gateway": iface.gateway if iface else "",
            "dhcp4": bool(iface and iface.ipv4 == "dhcp"),
            "ipv6": str(a6) if a6 else "", "address6": str(a6.ip) if a6 else "",
            "prefix6": a6.network.prefixlen if a6 else 0, "gateway6": iface.gateway6 if iface else "",
            "dhcp6": bool(iface and iface.ipv6 == "dhcp6"),
            "ipv6_method": ("static" if a6 else iface.ipv6) if iface else ""}


def network_devices(eff: Effective) -> list[dict[str, Any]]:
    """Every network device of the node (NICs, bonds, VLAN devices) with where its addresses are."""
    interfaces = eff.interfaces
    boot = boot_device(interfaces)
    devices = []
    for iface in interfaces:
        device = {"name": iface.device, "kind": "ether" if iface.mac else "bond", "mac": iface.mac,
                  "mtu": iface.mtu, "master": iface.bond, "vlans": [iface.netdev] if iface.vlan else [],
                  "slaves": [s.device for s in interfaces if s.bond == iface.device],
                  "bond": _bond_options(iface.bond_options) if not iface.mac else {}, "parent": "", "vid": 0,
                  "boot": iface is boot and not iface.vlan}
        device.update(_addresses(None if iface.vlan or iface.bond else iface))
        devices.append(device)
        if iface.vlan:
            devices.append({"name": iface.netdev, "kind": "vlan", "mac": "", "mtu": iface.mtu, "master": "",
                            "vlans": [], "slaves": [], "bond": {}, "parent": iface.device, "vid": iface.vlan,
                            "boot": iface is boot, **_addresses(iface)})
    return devices


def _fqdn(eff: Effective) -> str:
    return f"{eff.name}.{eff.settings.domain}" if eff.settings.domain else eff.name


def host_entries(members: tuple[Effective, ...]) -> list[dict[str, Any]]:
    """/etc/hosts lines for a cluster: each member's boot device addresses under its name (and FQDN), its other
    devices' as NAME-DEVICE."""
    entries = []
    for eff in sorted(members, key=lambda e: e.name):
        boot = boot_device(eff.interfaces)
        for iface in eff.interfaces:
            names = ([_fqdn(eff), eff.name] if _fqdn(eff) != eff.name else [eff.name]) if iface is boot else \
                [f"{eff.name}-{iface.netdev.replace('.', '-')}"]
            for address in (iface.static4, iface.static6):
                if address is not None:
                    entries.append({"address": str(address.ip), "names": names, "node": eff.name})
    return entries


def template_context(inputs: Inputs) -> dict[str, Any]:
    eff = inputs.node
    settings = eff.settings
    boot = boot_device(eff.interfaces)
    own = [str(a.ip) for a in (boot.static4, boot.static6) if a is not None] if boot else []
    fqdn = _fqdn(eff)
    dns = resolve_servers(settings.dns, inputs.server_host)
    node = {"name": eff.name, "fqdn": fqdn, "domain": settings.domain, "mac": eff.node.mac,
            "macs": list(eff.node.macs), "machine_id": eff.node.machine_id, "profile": eff.profile,
            "cluster": eff.node.cluster, "groups": list(eff.node.groups), "kernel_args": settings.kernel_args,
            "vars": dict(settings.vars), "addresses": own, "names": [fqdn, eff.name] if fqdn != eff.name else
            [eff.name], "interfaces": [i.to_dict() for i in eff.interfaces]}
    return {
        "node": node,
        "vars": dict(settings.vars),
        "interfaces": node["interfaces"],
        "devices": network_devices(eff),
        "cluster": {"name": eff.node.cluster, "domain": settings.domain,
                    "members": sorted(m.name for m in inputs.members)},
        "hosts": host_entries(inputs.members),
        "services": {"dns": dns, "dns_addresses": [d for d in dns if is_address(d)],
                     "ntp": resolve_servers(settings.ntp, inputs.server_host),
                     "syslog": resolve_servers(settings.syslog, inputs.server_host),
                     "search": [settings.domain] if settings.domain else []},
        "ssh": {"authorized_keys": list(settings.authorized_keys),
                "host_keys": [{"type": k.type, "public": k.public, "fingerprint": k.fingerprint}
                              for k in inputs.host_keys]},
        "base": dict(inputs.base),
        "server": {"host": inputs.server_host, "url": inputs.server_url},
        **inputs.extra,
    }
