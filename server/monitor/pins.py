"""Per-node generation pins: which generation a node boots, and the signed manifest that makes it boot it.

A node normally boots its profile's newest generation. ``layerboot nodes pin MAC N`` (or the ladder's
``boot = "last-good"``) sets ``nodes.pinned_generation``; :func:`boot_generation` is the one place that chooses.

Serials: stage1 with a cache disk (and an A/B slot) refuses a manifest whose serial is lower than the last it
accepted (anti-replay, initrd/stage1/cache.py). A pinned generation is older than what the node may have
accepted since, so its stored manifest would be refused. A pin is therefore served as a manifest of that
generation's layers, kernel, initrd and command line, signed afresh with the next store-wide serial the first
time the node asks for it after the pin was set, and kept (``pinned_manifests``) so every later boot gets the
same bytes. The serial counter is the one every generation takes its serial from, so the new serial is above
any manifest the node can have seen; a new pin (or unpin) drops the kept one. When the node's profile gets
a generation newer than the pin, that one has a higher serial still, so unpinning always moves the node on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_private_key
from layerboot.overlays.layer import utc_now
from layerboot.overlays.manifest import sign_manifest
from layerboot.overlays.profile import Generation, Profiles
from layerboot.overlays.serial import locked, next_serial

if TYPE_CHECKING:
    from layerboot.server.nodes import Node, Registry

log = logging.getLogger("layerboot.monitor.pins")


def boot_generation(node: "Node", profiles: Profiles) -> Generation:
    """The generation ``node`` boots: its pinned one if it has a pin, else its profile's newest."""
    if node.pinned_generation is not None:
        return profiles.generation(node.profile, node.pinned_generation)
    return profiles.current(node.profile)


def check_pin(profiles: Profiles, node: "Node", generation: int) -> Generation:
    """The generation a pin names; an error if the node's profile has no such (bootable) generation."""
    gen = profiles.generation(node.profile, generation)
    if not gen.kernel or not gen.initrd:
        raise LayerbootError(f"generation {generation} of {node.profile} has no kernel or initrd to boot")
    return gen


def node_manifest(registry: "Registry", profiles: Profiles, node: "Node") -> tuple[bytes, Generation, int]:
    """(signed manifest bytes, generation, serial) that ``/nodes/MAC/manifest`` serves to ``node``."""
    gen = boot_generation(node, profiles)
    if node.pinned_generation is None:
        return profiles.signed_manifest(node.profile, gen.number), gen, gen.serial
    row = registry.db.one("SELECT * FROM pinned_manifests WHERE mac = ?", (node.mac,))
    if row is not None and row["profile"] == node.profile and row["generation"] == gen.number:
        return row["envelope"].encode("utf-8"), gen, row["serial"]
    envelope, serial = _sign_pinned(profiles, gen)
    with registry.db.transaction() as tx:
        tx.execute("DELETE FROM pinned_manifests WHERE mac = ?", (node.mac,))
        tx.execute("INSERT INTO pinned_manifests (mac, profile, generation, serial, envelope, created) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (node.mac, node.profile, gen.number, serial,
                                                 envelope.decode("utf-8"), utc_now()))
    log.info("node %s is pinned to %s generation %d: signed its manifest with serial %d", node.mac, node.profile,
             gen.number, serial)
    return envelope, gen, serial


def _sign_pinned(profiles: Profiles, gen: Generation) -> tuple[bytes, int]:
    private_key = load_private_key(profiles.paths.signing_key)
    with locked(profiles.paths.state / "store.lock"):
        serial = next_serial(profiles.paths.serial_file)
    manifest = dataclasses.replace(profiles.manifest_for(gen), serial=serial, created=utc_now())
    return sign_manifest(manifest, private_key), serial
