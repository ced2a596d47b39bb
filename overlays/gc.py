"""Deleting from the store: a profile, a layer nothing uses, and garbage collection of old generations.

What keeps a layer (kernels and initrds too) in the store — its *references*:

* any generation of any profile that names it (layers, kernel, initrd): old generations included, because a
  rollback to them must still work;
* an upload that was baked into it and waits for ``layerboot uploads approve`` (``held``);
* another stored layer that records it as its ``base`` (the base an overlay was made on; ``parent`` is only
  provenance and keeps nothing).

Garbage collection first drops generations, then every layer left without references. A generation stays when
any of these holds: it is the profile's current one; it is among the profile's last ``keep_generations``; it is
newer than ``keep_days``; a node booted it within ``booted_days`` (boot reports carry the manifest serial,
which names exactly one generation store-wide). A layer with no references stays when it was imported within
``keep_days`` (it may be on its way into a profile), and always when it is younger than an hour (an import or
a bake may be about to use it). :func:`plan_gc` only computes; :func:`apply_gc` deletes, under the store lock
with the references checked again.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from layerboot.atomic import fsync_dir
from layerboot.errors import LayerbootError
from layerboot.overlays.layer import Layer
from layerboot.overlays.profile import Generation, Profiles, number_ranges
from layerboot.overlays.serial import locked

log = logging.getLogger("layerboot.gc")

MIN_AGE = dt.timedelta(hours=1)      # an unreferenced layer younger than this is never collected


@dataclass(frozen=True)
class Retention:
    keep_generations: int = 5         # the last N generations of every profile
    keep_days: float = 14.0           # generations and unreferenced layers newer than this
    booted_days: float = 30.0         # generations a node booted within this


@dataclass(frozen=True)
class GcPlan:
    generations: tuple[Generation, ...]              # to delete
    layers: tuple[Layer, ...]                        # to delete
    kept: dict[str, list[int]] = field(default_factory=dict)           # profile -> generations kept
    booted: dict[str, list[int]] = field(default_factory=dict)         # kept only because a node booted them

    @property
    def bytes(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def empty(self) -> bool:
        return not (self.generations or self.layers)

    def as_dict(self) -> dict[str, object]:
        return {"generations": [{"profile": g.profile, "generation": g.number, "serial": g.serial,
                                 "created": g.created} for g in self.generations],
                "layers": [layer.__dict__ for layer in self.layers], "bytes": self.bytes,
                "kept": self.kept, "kept_because_booted": self.booted}


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _generations(profiles: Profiles) -> list[Generation]:
    return [gen for name in profiles.names() for gen in profiles.history(name)]


def _named_by(gen: Generation) -> set[str]:
    return set(gen.objects)


def references(profiles: Profiles, digest: str, held: Collection[str] = ()) -> list[str]:
    """Everything that keeps ``digest`` in the store, as short phrases (empty when nothing does)."""
    found: dict[str, list[int]] = {}
    for gen in _generations(profiles):
        if digest in _named_by(gen):
            found.setdefault(gen.profile, []).append(gen.number)
    phrases = [f"profile {name} generation{'s' if len(numbers) > 1 else ''} {number_ranges(numbers)}"
               for name, numbers in found.items()]
    if digest in held:
        phrases.append("an upload waiting for approval ('layerboot uploads list')")
    store = profiles.store
    children = [layer.short for layer in store.layers() if layer.base == digest and layer.digest != digest]
    if children:
        phrases.append(f"the base of layer{'s' if len(children) > 1 else ''} {', '.join(children)}")
    return phrases


def remove_layer(profiles: Profiles, ref: str, held: Collection[str] = ()) -> Layer:
    """Delete one layer; refused, naming what uses it, while anything references it."""
    store = profiles.store
    layer = store.get(ref)
    with locked(store.paths.store_lock):
        used = references(profiles, layer.digest, held)
        if used:
            raise LayerbootError(f"layer {layer.short} is still used by {'; '.join(used)}",
                                 hint="take it out of those profiles, then drop old generations with "
                                      "'layerboot store gc'")
        store.delete(layer.digest)
    log.info("removed %s layer %s", layer.kind, layer.short)
    return layer


def delete_profile(profiles: Profiles, name: str, *, nodes: Collection[str] = ()) -> int:
    """Delete a profile with all its generations and manifests; refused while nodes boot it.

    Its layers stay in the store (``store gc`` collects those nothing else uses). Returns the generations
    deleted."""
    history = profiles.history(name)
    if nodes:
        listed = ", ".join(sorted(nodes)[:5]) + (", ..." if len(nodes) > 5 else "")
        raise LayerbootError(f"profile {name} is booted by {len(nodes)} registered node(s): {listed}",
                             hint="move them first: layerboot nodes set-profile MAC OTHER-PROFILE")
    paths = profiles.paths
    with locked(paths.store_lock):
        for directory in (paths.profile_dir(name), paths.manifest_dir(name)):
            if directory.exists():
                shutil.rmtree(directory)
        fsync_dir(paths.profiles)
        if paths.manifests.is_dir():
            fsync_dir(paths.manifests)
    log.info("deleted profile %s (%d generations)", name, len(history))
    return len(history)


def plan_gc(profiles: Profiles, retention: Retention, *, booted_serials: Collection[int] = (),
            held: Collection[str] = (), now: dt.datetime | None = None) -> GcPlan:
    """What a garbage collection with ``retention`` would delete (nothing is touched)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    young = now - dt.timedelta(days=retention.keep_days)
    drop: list[Generation] = []
    kept: dict[str, list[int]] = {}
    booted: dict[str, list[int]] = {}
    for name in profiles.names():
        history = profiles.history(name)
        last = {g.number for g in history[-max(1, retention.keep_generations):]}
        for gen in history:
            if gen.number in last or _parse_time(gen.created) >= young:
                kept.setdefault(name, []).append(gen.number)
            elif gen.serial in booted_serials:
                kept.setdefault(name, []).append(gen.number)
                booted.setdefault(name, []).append(gen.number)
            else:
                drop.append(gen)
    dropped = {(g.profile, g.number) for g in drop}
    live = [g for g in _generations(profiles) if (g.profile, g.number) not in dropped]
    layers = _unreferenced(profiles, live, held, protect_after=min(young, now - MIN_AGE))
    return GcPlan(tuple(drop), tuple(layers), kept, booted)


def _unreferenced(profiles: Profiles, live: Iterable[Generation], held: Collection[str], *,
                  protect_after: dt.datetime) -> list[Layer]:
    """Layers no live generation, held upload or kept layer's base keeps, and old enough to go."""
    store = profiles.store
    all_layers = {layer.digest: layer for layer in store.layers()}
    keep: set[str] = set(held)
    for gen in live:
        keep |= _named_by(gen)
    keep |= {d for d, layer in all_layers.items() if _parse_time(layer.created) >= protect_after}
    pending = list(keep)
    while pending:                       # a kept overlay keeps the base it was made on
        layer = all_layers.get(pending.pop())
        if layer is not None and layer.base and layer.base not in keep:
            keep.add(layer.base)
            pending.append(layer.base)
    return [layer for digest, layer in sorted(all_layers.items()) if digest not in keep]


def apply_gc(profiles: Profiles, plan: GcPlan, *, held: Collection[str] = ()) -> GcPlan:
    """Delete what ``plan`` names, under the store lock; a generation or layer that became used since the
    plan was made (a new generation naming it) is kept. Returns what was really deleted."""
    paths = profiles.paths
    deleted_gens: list[Generation] = []
    deleted_layers: list[Layer] = []
    with locked(paths.store_lock):
        for gen in plan.generations:
            current = profiles.current(gen.profile)
            if gen.number == current.number:
                continue
            profiles.manifest_path(gen.profile, gen.number).unlink(missing_ok=True)
            (paths.profile_dir(gen.profile) / f"{gen.number}.json").unlink(missing_ok=True)
            deleted_gens.append(gen)
        for directory in {paths.profile_dir(g.profile) for g in deleted_gens} | \
                {paths.manifest_dir(g.profile) for g in deleted_gens}:
            if directory.is_dir():
                fsync_dir(directory)
        live_names: set[str] = set(held)
        for gen in _generations(profiles):
            live_names |= _named_by(gen)
        leaving = {layer.digest for layer in plan.layers}
        live_names |= {layer.base for layer in profiles.store.layers() if layer.base and layer.digest not in leaving}
        for layer in plan.layers:
            if layer.digest in live_names:
                continue
            profiles.store.delete(layer.digest)
            deleted_layers.append(layer)
    log.info("gc: deleted %d generation(s) and %d layer(s)", len(deleted_gens), len(deleted_layers))
    return GcPlan(tuple(deleted_gens), tuple(deleted_layers), plan.kept, plan.booted)
