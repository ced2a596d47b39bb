"""Profiles: ordered layer lists (base first) with immutable, numbered generations.

Every change (add, remove, move, rollback, cherry-pick, new kernel) writes generation N+1 and publishes its
signed manifest with a new, higher serial. Generations are never rewritten, so ``log`` is the full history
and a rollback is simply a new generation with an old layer list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerboot import strictjson
from layerboot.atomic import create_exclusive, write_bytes
from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.keys import load_private_key
from layerboot.overlays.cmdline import check_cmdline
from layerboot.overlays.layer import Layer, utc_now
from layerboot.overlays.manifest import Artifact, Manifest, sign_manifest
from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.overlays.names import check_digest, check_profile_name
from layerboot.overlays.serial import locked, next_serial
from layerboot.overlays.store import Store

log = logging.getLogger("layerboot.profile")


def number_ranges(numbers: Iterable[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5' (generation numbers have gaps once old ones are collected)."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


@dataclass(frozen=True)
class Generation:
    profile: str
    number: int
    layers: tuple[str, ...]          # digests, base first
    action: str
    serial: int
    cmdline: str = ""
    kernel: str | None = None
    initrd: str | None = None
    created: str = field(default_factory=utc_now)
    modules: str | None = None       # the kernel's module tree as a squashfs; stacked just above the base

    def __post_init__(self) -> None:
        check_profile_name(self.profile)
        for digest in (*self.layers, *(d for d in (self.kernel, self.initrd, self.modules) if d)):
            check_digest(digest)
        if not self.layers:
            raise LayerbootError(f"generation {self.number} of {self.profile} has no base layer")

    @property
    def base(self) -> str:
        return self.layers[0]

    @property
    def chain(self) -> tuple[str, ...]:
        """What a node stacks, base first: the base, the kernel's modules layer (if any), the overlays."""
        return self.layers[:1] + ((self.modules,) if self.modules else ()) + self.layers[1:]

    @property
    def objects(self) -> tuple[str, ...]:
        """Every store object this generation needs: its chain, kernel and initrd."""
        return self.chain + tuple(d for d in (self.kernel, self.initrd) if d)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored, as ``profile show --json`` and the API give it (``layers`` base first)."""
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Generation":
        data = strictjson.loads(text, what="generation record")
        try:
            data["layers"] = tuple(data["layers"])
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise LayerbootError(f"malformed generation record: {err}") from None


@dataclass(frozen=True)
class GenerationDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reordered: bool
    changes: tuple[str, ...]         # kernel / initrd / cmdline changes, as sentences

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.reordered or self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed), "reordered": self.reordered,
                "changes": list(self.changes), "empty": self.empty}


class Profiles:
    def __init__(self, store: Store, *, mirrors: MirrorPolicy | None = None) -> None:
        """``mirrors``: what new manifests name as mirrors (the ``mirrors.*`` settings; none by default)."""
        self.store = store
        self.paths = store.paths
        self.mirrors = mirrors or MirrorPolicy()

    # -- reading -----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.paths.profiles.is_dir():
            return []
        return sorted(p.name for p in self.paths.profiles.iterdir() if p.is_dir() and any(p.glob("*.json")))

    def _generation_path(self, name: str, number: int) -> Path:
        return self.paths.profile_dir(name) / f"{number}.json"

    def numbers(self, name: str) -> list[int]:
        directory = self.paths.profile_dir(check_profile_name(name))
        if not directory.is_dir():
            return []
        return sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit())

    def generation(self, name: str, number: int) -> Generation:
        path = self._generation_path(check_profile_name(name), number)
        try:
            return Generation.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = self.numbers(name)
            if not known:
                raise NotFoundError(f"no profile named {name!r}", hint="see 'layerboot profile list'") from None
            raise NotFoundError(f"profile {name} has no generation {number} (it has {number_ranges(known)})",
                                hint="old generations go with 'layerboot store gc'; see 'layerboot profile log "
                                     f"{name}'") from None

    def current(self, name: str) -> Generation:
        numbers = self.numbers(name)
        if not numbers:
            raise NotFoundError(f"no profile named {name!r}", hint="see 'layerboot profile list'")
        return self.generation(name, numbers[-1])

    def history(self, name: str) -> list[Generation]:
        numbers = self.numbers(name)
        if not numbers:
            raise NotFoundError(f"no profile named {name!r}", hint="see 'layerboot profile list'")
        return [self.generation(name, n) for n in numbers]

    def manifest_path(self, name: str, number: int) -> Path:
        return self.paths.manifest_dir(check_profile_name(name)) / f"{number}.json"

    def signed_manifest(self, name: str, number: int | None = None) -> bytes:
        gen = self.current(name) if number is None else self.generation(name, number)
        try:
            return self.manifest_path(name, gen.number).read_bytes()
        except FileNotFoundError:
            raise LayerbootError(f"generation {gen.number} of {name} has no published manifest") from None

    # -- changing ----------------------------------------------------------------------------------------
    def create(self, name: str, base_ref: str, *, cmdline: str = "", kernel: str | None = None,
               initrd: str | None = None) -> Generation:
        check_profile_name(name)
        check_cmdline(cmdline, what=f"the command line of profile {name}")
        if self.numbers(name):
            raise LayerbootError(f"profile {name!r} already exists")
        base = self.store.get(base_ref)
        if base.kind != "base":
            raise LayerbootError(f"layer {base.short} is a {base.kind} layer; a profile starts from a base layer")
        return self._commit(name, (base.digest,), f"create from base {base.short}", cmdline=cmdline,
                            kernel=self._boot_ref(kernel, "kernel"), initrd=self._boot_ref(initrd, "initrd"),
                            expect_number=0)

    def add(self, name: str, ref: str, *, position: int | None = None, force: bool = False) -> Generation:
        gen = self.current(name)
        layer = self._overlay_for(gen, ref, force=force)
        if layer.digest in gen.layers:
            raise LayerbootError(f"layer {layer.short} is already in {name} (generation {gen.number})")
        layers = list(gen.layers)
        index = self._position(gen, position, inserting=True)
        layers.insert(index, layer.digest)
        return self._commit_from(gen, tuple(layers), f"add {layer.short} at {index}")

    def remove(self, name: str, ref: str) -> Generation:
        gen = self.current(name)
        digest = self._member(gen, ref)
        if digest == gen.base:
            raise LayerbootError("the base layer cannot be removed; create a new profile for another base")
        layers = tuple(d for d in gen.layers if d != digest)
        return self._commit_from(gen, layers, f"remove {digest[:12]}")

    def move(self, name: str, ref: str, position: int) -> Generation:
        gen = self.current(name)
        digest = self._member(gen, ref)
        if digest == gen.base:
            raise LayerbootError("the base layer always stays at position 0")
        layers = [d for d in gen.layers if d != digest]
        index = self._position(gen, position, inserting=False)
        layers.insert(index, digest)
        if tuple(layers) == gen.layers:
            raise LayerbootError(f"layer {digest[:12]} is already at position {index}")
        return self._commit_from(gen, tuple(layers), f"move {digest[:12]} to {index}")

    def rollback(self, name: str, number: int) -> Generation:
        gen = self.current(name)
        old = self.generation(name, number)
        if number == gen.number:
            raise LayerbootError(f"generation {number} is already the current generation of {name}")
        return self._commit(name, old.layers, f"rollback to generation {number}", cmdline=old.cmdline,
                            kernel=old.kernel, initrd=old.initrd, modules=old.modules, expect_number=gen.number)

    def cherry_pick(self, name: str, source_profile: str, ref: str, *, force: bool = False,
                    position: int | None = None) -> Generation:
        source = self.current(source_profile)
        digest = self._member(source, ref)
        if digest == source.base:
            raise LayerbootError(f"{digest[:12]} is the base of {source_profile}; only overlay layers can be picked")
        gen = self.add(name, digest, position=position, force=force)
        return gen

    def set_boot(self, name: str, *, kernel: str | None = None, initrd: str | None = None,
                 cmdline: str | None = None, modules: str | None = None) -> Generation:
        """New kernel, initrd, command line and/or modules layer (``modules=""`` drops the modules layer)."""
        gen = self.current(name)
        new_kernel = self._boot_ref(kernel, "kernel") if kernel else gen.kernel
        new_initrd = self._boot_ref(initrd, "initrd") if initrd else gen.initrd
        new_cmdline = gen.cmdline if cmdline is None else check_cmdline(cmdline, what=f"the command line of profile "
                                                                                      f"{name}")
        new_modules = gen.modules if modules is None else (self._boot_ref(modules, "modules") if modules else None)
        old_values = (gen.kernel, gen.initrd, gen.cmdline, gen.modules)
        if (new_kernel, new_initrd, new_cmdline, new_modules) == old_values:
            raise LayerbootError("nothing to change: kernel, initrd, cmdline and modules are already as given")
        parts = [label for label, old, new in (("kernel", gen.kernel, new_kernel), ("initrd", gen.initrd, new_initrd),
                                               ("cmdline", gen.cmdline, new_cmdline),
                                               ("modules", gen.modules, new_modules)) if old != new]
        return self._commit(name, gen.layers, "set " + ", ".join(parts), cmdline=new_cmdline, kernel=new_kernel,
                            initrd=new_initrd, modules=new_modules, expect_number=gen.number)

    def republish(self, name: str, action: str) -> Generation:
        """A new generation with the same content, so its manifest is signed again with what changed outside
        the generation record (the mirrors settings: ``layerboot mirror publish``)."""
        gen = self.current(name)
        return self._commit(name, gen.layers, action, cmdline=gen.cmdline, kernel=gen.kernel, initrd=gen.initrd,
                            modules=gen.modules, expect_number=gen.number)

    def replace_layers(self, name: str, layers: tuple[str, ...], action: str, *, expect_number: int) -> Generation:
        """Commit an arbitrary new layer list (used by squash); fails if the profile moved on meanwhile."""
        gen = self.current(name)
        return self._commit(name, layers, action, cmdline=gen.cmdline, kernel=gen.kernel, initrd=gen.initrd,
                            modules=gen.modules, expect_number=expect_number)

    # -- comparing ---------------------------------------------------------------------------------------
    def diff(self, name: str, old_number: int, new_number: int) -> GenerationDiff:
        old, new = self.generation(name, old_number), self.generation(name, new_number)
        added = tuple(d for d in new.layers if d not in old.layers)
        removed = tuple(d for d in old.layers if d not in new.layers)
        kept_old = [d for d in old.layers if d in new.layers]
        kept_new = [d for d in new.layers if d in old.layers]
        changes = []
        for label in ("kernel", "initrd", "cmdline", "modules"):
            before, after = getattr(old, label), getattr(new, label)
            if before != after:
                changes.append(f"{label}: {before or '-'} -> {after or '-'}")
        return GenerationDiff(added, removed, kept_old != kept_new, tuple(changes))

    # -- helpers -----------------------------------------------------------------------------------------
    def _overlay_for(self, gen: Generation, ref: str, *, force: bool) -> Layer:
        layer = self.store.get(ref)
        if not layer.is_squashfs:
            raise LayerbootError(f"{layer.short} is a {layer.kind}, not a squashfs layer")
        if layer.kind == "node":
            raise LayerbootError(f"{layer.short} is a node's private per-node layer; it is never part of a profile")
        if layer.kind == "modules":
            raise LayerbootError(f"{layer.short} is a kernel modules layer; it goes with the kernel",
                                 hint=f"layerboot profile set {gen.profile} --modules {layer.short} "
                                      "(or 'layerboot initrd build --profile', which sets both)")
        if layer.kind == "base" and not force:
            raise LayerbootError(f"{layer.short} is a base layer; stacking a base as an overlay needs --force")
        if layer.kind == "overlay" and layer.base != gen.base and not force:
            recorded = layer.base[:12] if layer.base else "none"
            raise LayerbootError(
                f"layer {layer.short} was made on base {recorded}, but profile {gen.profile} uses base "
                f"{gen.base[:12]}", hint="pass --force to stack it anyway")
        return layer

    def _member(self, gen: Generation, ref: str) -> str:
        digest = self.store.resolve(ref)
        if digest not in gen.layers:
            raise LayerbootError(f"layer {digest[:12]} is not in {gen.profile} (generation {gen.number})")
        return digest

    @staticmethod
    def _position(gen: Generation, position: int | None, *, inserting: bool) -> int:
        top = len(gen.layers) if inserting else len(gen.layers) - 1
        if position is None:
            return top
        if not 1 <= position <= top:
            raise LayerbootError(f"position must be between 1 (just above the base) and {top}")
        return position

    def _boot_ref(self, ref: str | None, kind: str) -> str | None:
        if ref is None:
            return None
        layer = self.store.get(ref)
        if layer.kind != kind:
            raise LayerbootError(f"{layer.short} is a {layer.kind}, not a {kind}")
        return layer.digest

    def _commit_from(self, gen: Generation, layers: tuple[str, ...], action: str) -> Generation:
        return self._commit(gen.profile, layers, action, cmdline=gen.cmdline, kernel=gen.kernel,
                            initrd=gen.initrd, modules=gen.modules, expect_number=gen.number)

    def _commit(self, name: str, layers: tuple[str, ...], action: str, *, cmdline: str, kernel: str | None,
                initrd: str | None, expect_number: int, modules: str | None = None) -> Generation:
        """Write generation N+1 and its signed manifest, under the store lock."""
        private_key = load_private_key(self.paths.signing_key)
        with locked(self.paths.store_lock):   # (checked under the lock: drop_unused_layer removes under it)
            for digest in (*layers, *((modules,) if modules else ())):
                if not self.store.objects.exists(digest):
                    raise LayerbootError(f"layer {digest[:12]} is missing from the store (run 'layerboot store fsck')")
            numbers = self.numbers(name)
            last = numbers[-1] if numbers else 0
            if last != expect_number:
                raise LayerbootError(f"profile {name} changed meanwhile (now at generation {last}); try again")
            serial = next_serial(self.paths.serial_file)
            gen = Generation(profile=name, number=last + 1, layers=layers, action=action, serial=serial,
                             cmdline=cmdline, kernel=kernel, initrd=initrd, modules=modules)
            manifest = self.manifest_for(gen)
            self.paths.manifest_dir(name).mkdir(parents=True, exist_ok=True)
            write_bytes(self.manifest_path(name, gen.number), sign_manifest(manifest, private_key))
            self.paths.profile_dir(name).mkdir(parents=True, exist_ok=True)
            self.paths.adopt(self.paths.manifest_dir(name), self.paths.profile_dir(name))
            if not create_exclusive(self._generation_path(name, gen.number), gen.to_json().encode("utf-8")):
                raise LayerbootError(f"generation {gen.number} of {name} appeared meanwhile; try again")
        log.info("profile %s: generation %d (%s), manifest serial %d", name, gen.number, action, serial)
        return gen

    def manifest_for(self, gen: Generation) -> Manifest:
        def artifact(digest: str | None) -> Artifact | None:
            return None if digest is None else Artifact.for_object(digest, self.store.get(digest).size)

        def layer(digest: str) -> Artifact:
            record = self.store.with_verity(self.store.get(digest))   # older records: computed once here
            return Artifact.for_object(digest, record.size, record.fsverity, record.verity)

        return Manifest(
            profile=gen.profile, generation=gen.number, serial=gen.serial, created=gen.created,
            cmdline=gen.cmdline, layers=tuple(layer(d) for d in gen.chain),
            kernel=artifact(gen.kernel), initrd=artifact(gen.initrd),
            mirrors=self.mirrors.for_profile(gen.profile), mirror_order=self.mirrors.order,
        )

    # -- checks ------------------------------------------------------------------------------------------
    def referenced(self) -> set[str]:
        """Every digest named by some generation of some profile, or as base/parent of a stored layer, and the
        dm-verity trees of those."""
        found: set[str] = set()
        for name in self.names():
            for number in self.numbers(name):
                gen = self.generation(name, number)
                found.update(gen.objects)
        layers = self.store.layers()
        for layer in layers:
            found.update(d for d in (layer.base, layer.parent) if d)
        found.update(layer.verity.tree for layer in layers if layer.verity is not None and layer.digest in found)
        return found

    def drop_unused_layer(self, digest: str, *, keep: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
        """Remove a layer (record and object, and its dm-verity tree unless another layer shares it) that nothing
        refers to; False when something does."""
        with locked(self.paths.store_lock):
            if digest in keep or digest in self.referenced() or not self.paths.object_meta(digest).exists():
                return False
            tree = self.store.get(digest).verity
            self.paths.object_meta(digest).unlink()
            self.store.objects.remove(digest)
            if tree is not None and tree.tree not in self.store.trees().values():
                self.store.objects.remove(tree.tree)
        log.info("removed layer %s: nothing refers to it", digest[:12])
        return True

    def check(self) -> list[str]:
        """Cross-check every generation: its signed manifest exists, every digest it names is recorded."""
        problems = []
        recorded = set(self.store.digests())
        for name in self.names():
            for number in self.numbers(name):
                gen = self.generation(name, number)
                if not self.manifest_path(name, number).is_file():
                    problems.append(f"profile {name} generation {number}: its signed manifest is missing")
                for digest in gen.objects:
                    if digest and digest not in recorded:
                        problems.append(f"profile {name} generation {number}: {digest[:12]} is not in the store")
        return problems
