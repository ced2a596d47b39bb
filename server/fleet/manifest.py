"""Per-node signed manifests: the profile's chain plus the node's own layer, naming the node.

For a named node, ``GET /nodes/MAC/manifest`` serves a manifest made for it alone: the generation
monitor/pins.py's :func:`boot_generation` chooses (its pin, else its profile's newest), with the node's layer on
top, the node's kernel command line, and ``node`` set to its MAC, so stage1 refuses it on any other node.

It is built on demand. Every request renders the node's files (templates; milliseconds) and compares a
fingerprint of everything the manifest depends on — the rendered files, the profile and generation, the kernel
command line — with the one stored in ``node_manifests``. Unchanged: the stored bytes are served again (same
serial). Changed (the node, its groups or cluster, a cluster member's address, a template, the profile, a pin):
the layer is packed and stored (deterministic: unchanged files give the same digest), and the manifest is
signed with the next store-wide serial, under the store lock, so it is above any manifest the node can have
accepted (a node's cache and A/B slots refuse lower serials). ``layerboot nodes render`` does the same ahead of
time, and ``--diff`` shows what would change without doing it. The node layer before the current one is kept
(a node that fetched the older manifest may still be downloading it); older ones are removed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from layerboot.overlays.keys import load_private_key
from layerboot.overlays.layer import utc_now
from layerboot.overlays.manifest import Artifact, sign_manifest
from layerboot.overlays.profile import Generation, Profiles
from layerboot.overlays.serial import locked, next_serial
from layerboot.server.fleet.hostkeys import host_keys
from layerboot.server.fleet.netargs import node_kernel_args, server_host
from layerboot.server.fleet.nodelayer import drop_node_layer, store_node_layer
from layerboot.server.fleet.probe import probe_chain
from layerboot.server.fleet.queries import Fleet, ManifestRow
from layerboot.server.fleet.records import Effective, effective, fleet_defaults
from layerboot.server.fleet.render import Inputs, Tree, render
from layerboot.server.monitor.pins import boot_generation

log = logging.getLogger("layerboot.fleet")


@dataclass(frozen=True)
class Build:
    """What a node's manifest would be now (nothing stored yet)."""

    mac: str
    node: Effective
    generation: Generation
    tree: Tree
    cmdline: str
    fingerprint: str


def template_dirs(config: Any, paths: Any) -> tuple[Any, ...]:
    from pathlib import Path
    return (*(Path(d) for d in config.fleet_template_dirs), paths.root / "templates")


class NodeManifests:
    def __init__(self, fleet: Fleet, profiles: Profiles, config: Any) -> None:
        self.fleet = fleet
        self.profiles = profiles
        self.store = profiles.store
        self.paths = profiles.paths
        self.config = config
        self.host = server_host(config)
        self.lock = threading.Lock()

    def wants(self, mac: str) -> bool:
        """Does this node get a per-node manifest (it has a name)?"""
        return self.fleet.db.scalar("SELECT count(*) FROM nodes WHERE mac = ? AND name IS NOT NULL", (mac,)) > 0

    def build(self, mac: str, groups: dict | None = None) -> Build:
        from layerboot.server.nodes import Registry

        node = Registry(self.fleet.db).get(mac)
        record = self.fleet.get(mac)
        groups = self.fleet.groups() if groups is None else groups
        base = fleet_defaults(self.config)
        eff = effective(record, groups, base)
        gen = boot_generation(node, self.profiles)
        members = tuple(effective(m, groups, base) for m in self.fleet.cluster_members(record.cluster)) or (eff,)
        keys = tuple(host_keys(self.paths, record.machine_id, tuple(self.config.fleet_ssh_host_key_types)))
        tree = render(Inputs(node=eff, members=members, host_keys=keys, base=probe_chain(self.store, gen.chain),
                             server_host=self.host, server_url=self.config.server_public_url.rstrip("/"),
                             template_dirs=template_dirs(self.config, self.paths)))
        cmdline = node_kernel_args(gen.cmdline, eff, host=self.host)
        fingerprint = hashlib.sha256(json.dumps({"tree": tree.digest(), "profile": gen.profile,
                                                 "generation": gen.number, "cmdline": cmdline},
                                                sort_keys=True).encode()).hexdigest()
        return Build(mac, eff, gen, tree, cmdline, fingerprint)

    def commit(self, build: Build) -> tuple[ManifestRow, bool]:
        """The stored manifest for ``build``: the one already there if nothing changed, else a new one (True)."""
        row = self.fleet.manifest_row(build.mac)
        if row is not None and row.fingerprint == build.fingerprint:
            return row, False
        gen = build.generation
        layer = store_node_layer(self.store, build.tree, name=build.node.name, mac=build.mac, base=gen.base)
        layer = self.store.with_verity(layer)
        with self.lock, locked(self.paths.store_lock):
            row = self.fleet.manifest_row(build.mac)        # another process may have been quicker
            if row is not None and row.fingerprint == build.fingerprint:
                return row, False
            serial = next_serial(self.paths.serial_file)
            template = self.profiles.manifest_for(gen)
            manifest = dataclasses.replace(
                template, serial=serial, created=utc_now(), cmdline=build.cmdline, node=build.mac,
                layers=template.layers + (Artifact.for_object(layer.digest, layer.size, layer.fsverity),))
            envelope = sign_manifest(manifest, load_private_key(self.paths.signing_key))
            previous = row.layer if row is not None and row.layer != layer.digest else (
                row.previous_layer if row is not None else None)
            new = ManifestRow(mac=build.mac, fingerprint=build.fingerprint, files=build.tree.index(),
                              layer=layer.digest, previous_layer=previous, profile=gen.profile,
                              generation=gen.number, serial=serial, cmdline=build.cmdline, envelope=envelope,
                              created=manifest.created)
            self.fleet.save_manifest_row(new)
        stale = {row.layer, row.previous_layer} - {layer.digest, previous} if row is not None else set()
        for digest in stale:
            if digest and not self.fleet.layer_in_use(digest):
                drop_node_layer(self.store, digest)
        log.info("node %s (%s): %s generation %d + node layer %s, manifest serial %d", build.node.name, build.mac,
                 gen.profile, gen.number, layer.short, serial)
        return new, True

    def serve(self, mac: str) -> tuple[bytes, Generation, int]:
        """What ``GET /nodes/MAC/manifest`` sends a named node."""
        build = self.build(mac)
        row, _ = self.commit(build)
        return row.envelope, build.generation, row.serial


def diff_lines(build: Build, row: ManifestRow | None) -> list[str]:
    """What committing ``build`` would change, as unified diffs (secrets only named), or [] when nothing."""
    name = build.node.name
    if row is not None and row.fingerprint == build.fingerprint:
        return []
    lines: list[str] = []
    old_files: dict[str, Any] = row.files if row is not None else {}
    if row is None:
        lines.append(f"{name}: not rendered yet")
    else:
        if (row.profile, row.generation) != (build.generation.profile, build.generation.number):
            lines.append(f"{name}: boots {row.profile} generation {row.generation} -> "
                         f"{build.generation.profile} generation {build.generation.number}")
        if row.cmdline != build.cmdline:
            lines += [f"{name}: kernel command line:", f"-{row.cmdline}", f"+{build.cmdline}"]
    new_files = build.tree.index()
    for path in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(path), new_files.get(path)
        if old is not None and new is not None and (old["sha256"], old["mode"]) == (new["sha256"], new["mode"]):
            continue
        if (old or new or {}).get("secret") or (old and old["text"] is None) or (new and new["text"] is None):
            state = "new" if old is None else "removed" if new is None else "changed"
            lines.append(f"{name}: /{path}: {state} (not shown: {'secret' if (old or new)['secret'] else 'binary'})")
            continue
        if old is not None and new is not None and old["text"] == new["text"]:
            lines.append(f"{name}: /{path}: mode {old['mode']} -> {new['mode']}")
            continue
        lines += [line.rstrip("\n") for line in difflib.unified_diff(
            (old["text"] if old else "").splitlines(keepends=True), (new["text"] if new else "").splitlines(keepends=True),
            fromfile=f"{name}:/{path}" if old else "/dev/null", tofile=f"{name}:/{path}" if new else "/dev/null")]
    return lines
