"""A/B install: the disk layout, what goes into a slot, and the boot-counting state GRUB and Linux share.

Disk (GPT)::

    1  layerboot-bios   1 MiB   BIOS boot (GRUB core.img for BIOS firmware)
    2  layerboot-esp    vfat    GRUB for UEFI, grub.cfg, the A/B state (grubenv), layout.json
    3  layerboot-a      ext4    slot A
    4  layerboot-b      ext4    slot B
    5  layerboot-data   ext4    the node's own data (never touched by updates)

A slot is an ext4 filesystem written from scratch for every update (``layerboot.slot=`` contract, see
docs/install.md)::

    manifest.json              the signed manifest envelope, byte for byte as the server signed it
    layers/<sha256>            the squashfs chain, named by digest (order comes from the manifest)
    layers/<sha256>.verity     each layer's dm-verity hash tree (the object the signed manifest names): stage1
                               attaches the layer through dm-verity instead of hashing it whole (localverity.py)
    boot/vmlinuz boot/initrd.img
    boot/grub-entry.cfg        GRUB's linux/initrd lines with this slot's command line
    layerboot-slot.json        written last: what was written and its hashes; no record = incomplete slot

State (in GRUB's environment block on the ESP): ``lb_order`` (preferred slot first), per slot ``lb_X_state``
(``empty`` | ``trial`` | ``good`` | ``bad``) and ``lb_X_tries`` (boot attempts left for a trial slot), and
``lb_booted`` (what GRUB picked last). An update: (1) mark the target ``empty`` (from now on GRUB never picks it),
(2) write the slot, fsync, unmount, (3) mount it read-only and re-hash everything against the signed manifest,
(4) only then mark it ``trial`` with N tries and put it first. A power cut anywhere before (4) leaves the old
slot the one that boots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from layerboot import strictjson
from layerboot.atomic import scratch_dir
from layerboot.build import bootloader
from layerboot.build.bootloader import SLOTS, Esp
from layerboot.build.data_layout import PART_TYPES, DataLayout, data_layout, plan_data
from layerboot.build.disk_actions import (TYPE_BIOS_BOOT, TYPE_ESP, TYPE_LINUX, Action, DiskContext, DiskLabel,
                                          Format, MiB, Partition, SECTOR, disk_size, mkfs_ext4, partition_path,
                                          probe, read_table)
from layerboot.errors import LayerbootError
from layerboot.initrd.stage1.localverity import TREE_SUFFIX
from layerboot.overlays.chain import mount
from layerboot.overlays.manifest import Manifest, verify_manifest
from layerboot.overlays.objects import sha256_file
from layerboot.overlays.profile import Profiles
from layerboot.progress import Progress
from layerboot.run import run

log = logging.getLogger("layerboot.ab")

STATES = ("empty", "trial", "good", "bad")
SLOT_RECORD = "layerboot-slot.json"
SLOT_FORMAT = "layerboot-slot/1"
LAYOUT_FORMAT = "layerboot-ab-layout/1"
PART_BIOS, PART_ESP, PART_A, PART_B, PART_DATA = 1, 2, 3, 4, 5
ESP_MIB = 64
MIN_DATA_MIB = 16
DEFAULT_TRIES = 3
CHUNK = 1 << 20


def other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


# -- the boot-counting state ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlotState:
    state: str = "empty"
    tries: int = 0


@dataclass(frozen=True)
class AbState:
    order: tuple[str, str] = ("A", "B")
    slots: dict[str, SlotState] = field(default_factory=lambda: {s: SlotState() for s in SLOTS})
    booted: str = ""

    def to_env(self) -> dict[str, str]:
        env = {"lb_order": " ".join(self.order)}
        for slot in SLOTS:
            env[f"lb_{slot}_state"] = self.slots[slot].state
            env[f"lb_{slot}_tries"] = str(self.slots[slot].tries)
        env["lb_booted"] = self.booted
        return env

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "AbState":
        order = tuple(env.get("lb_order", "A B").split())
        if sorted(order) != sorted(SLOTS):
            raise LayerbootError(f"A/B state names an impossible slot order {env.get('lb_order')!r}")
        slots = {}
        for slot in SLOTS:
            state = env.get(f"lb_{slot}_state", "empty")
            tries = env.get(f"lb_{slot}_tries", "0")
            if state not in STATES or not tries.isdigit():
                raise LayerbootError(f"A/B state of slot {slot} is unreadable ({state!r}, tries {tries!r})")
            slots[slot] = SlotState(state, int(tries))
        return cls(order=order, slots=slots, booted=env.get("lb_booted", ""))  # type: ignore[arg-type]

    def with_slot(self, slot: str, state: str, tries: int = 0) -> "AbState":
        return replace(self, slots={**self.slots, slot: SlotState(state, tries)})


def pick_slot(state: AbState) -> tuple[str | None, AbState]:
    """What GRUB's select script does at one boot: the slot it boots and the state it saves.

    Mirrors :func:`layerboot.build.bootloader.select_script` line for line (a test runs both on one disk).
    """
    current = state
    for slot in state.order:
        entry = current.slots[slot]
        if entry.state == "good":
            return slot, replace(current, booted=slot)
        if entry.state == "trial":
            if 0 < entry.tries <= bootloader.MAX_TRIES:
                return slot, replace(current.with_slot(slot, "trial", entry.tries - 1), booted=slot)
            current = current.with_slot(slot, "bad", 0)
    return None, replace(current, booted="")


def choose_target(state: AbState, booted: str | None) -> str:
    """The slot an update goes to: never the running one, never the only good one."""
    goods = [s for s in SLOTS if state.slots[s].state == "good"]
    if booted:
        target = other(booted)
        if goods == [target]:
            raise LayerbootError(f"slot {target} is the only confirmed slot and slot {booted} (running) is not "
                                 "confirmed yet; an update would leave nothing known-good",
                                 hint="run 'layerboot mark-good' once this boot is healthy, then update")
        return target
    if len(goods) == 1:
        return other(goods[0])
    if not goods:
        for slot in state.order:
            if state.slots[slot].state in ("empty", "bad"):
                return slot
    return state.order[1]


# -- the layout ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    esp_uuid: str                     # vfat volume id, 8 hex digits
    slot_uuids: dict[str, str]        # ext4 UUIDs of slot A and B
    data_uuid: str                    # ext4 UUID of the data filesystem (unused by a ZFS data area)
    slot_mib: int
    data: DataLayout = DataLayout()   # what the data area is made of (build/data_layout.py)

    def to_json(self) -> str:
        record = {"format": LAYOUT_FORMAT, "esp_uuid": self.esp_uuid, "slot_uuids": self.slot_uuids,
                  "data_uuid": self.data_uuid, "slot_mib": self.slot_mib}
        if self.data.kind != "plain":      # a plain layout's record stays as older versions wrote it
            record["data"] = self.data.to_dict()
        return json.dumps(record, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        try:
            data = strictjson.loads(text, what="layout.json")
            if data.get("format") != LAYOUT_FORMAT:
                raise ValueError("format")
            area = DataLayout.from_dict(data["data"]) if "data" in data else DataLayout()
            return cls(data["esp_uuid"], dict(data["slot_uuids"]), data["data_uuid"], int(data["slot_mib"]), area)
        except (strictjson.JSONError, ValueError, KeyError, TypeError, AttributeError):
            raise LayerbootError("layerboot/layout.json on the ESP is damaged",
                                 hint="reinstall with 'layerboot install --disk DEV --wipe'") from None

    @classmethod
    def new(cls, slot_mib: int, data: DataLayout = DataLayout()) -> "Layout":
        return cls(uuid.uuid4().hex[:8].upper(), {s: str(uuid.uuid4()) for s in SLOTS}, str(uuid.uuid4()), slot_mib,
                   data)

    def esp_fs_uuid(self) -> str:
        return f"{self.esp_uuid[:4]}-{self.esp_uuid[4:]}"


# -- what goes into a slot ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlotSource:
    """A signed manifest and the local files it names (from the store)."""

    envelope: bytes
    manifest: Manifest
    files: dict[str, Path]            # slot-relative path -> source file

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files.values()) + len(self.envelope)


def source_from_store(profiles: Profiles, profile: str, generation: int | None, public_key: bytes) -> SlotSource:
    envelope = profiles.signed_manifest(profile, generation)
    manifest = verify_manifest(envelope, public_key, profile=profile)
    if manifest.kernel is None or manifest.initrd is None:
        raise LayerbootError(f"generation {manifest.generation} of {profile} has no kernel or initrd to boot "
                             "from disk", hint=f"layerboot profile set {profile} --kernel REF --initrd REF")
    files = {f"layers/{a.digest}": profiles.store.path(a.digest) for a in manifest.layers}
    for layer in manifest.layers:
        if layer.verity is not None:
            files[tree_rel(layer.digest)] = _tree_object(profiles, layer.digest, layer.verity.tree)
    files["boot/vmlinuz"] = profiles.store.path(manifest.kernel.digest)
    files["boot/initrd.img"] = profiles.store.path(manifest.initrd.digest)
    return SlotSource(envelope, manifest, files)


def tree_rel(digest: str) -> str:
    """Where a layer's dm-verity tree goes in a slot: next to the layer."""
    return f"layers/{digest}{TREE_SUFFIX}"


def _tree_object(profiles: Profiles, digest: str, tree: str) -> Path:
    """The tree object the manifest names; made again (byte for byte the same) when the store lost it."""
    store = profiles.store
    if not store.objects.exists(tree):
        log.warning("the dm-verity tree of layer %s is missing from the store: making it again", digest[:12])
        made = store.with_verity(store.get(digest)).verity
        if made is None or made.tree != tree:
            raise LayerbootError(f"the dm-verity tree of layer {digest[:12]} cannot be made again as the signed "
                                 "manifest names it", hint="run 'layerboot store fsck'")
    return store.path(tree)


@dataclass(frozen=True)
class SlotRecord:
    profile: str
    generation: int
    serial: int
    manifest_sha256: str
    files: dict[str, str]             # path -> sha256
    written: str


def expected_files(manifest: Manifest) -> dict[str, str]:
    expected = {f"layers/{a.digest}": a.digest for a in manifest.layers}
    expected.update({tree_rel(a.digest): a.verity.tree for a in manifest.layers if a.verity is not None})
    if manifest.kernel:
        expected["boot/vmlinuz"] = manifest.kernel.digest
    if manifest.initrd:
        expected["boot/initrd.img"] = manifest.initrd.digest
    return expected


def _copy_synced(source: Path, target: Path, step: Progress | None = None) -> str:
    """Copy and fsync one file; returns the sha256 of what was read."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            if step is not None:
                step.advance(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


class AbDisk:
    """An installed A/B disk: its layout, state and slots. The ESP is read and written with mtools only."""

    def __init__(self, disk: str, *, workdir: Path | None = None) -> None:
        self.disk = disk
        self.esp = Esp(partition_path(disk, PART_ESP))
        self.workdir = workdir or Path(tempfile.gettempdir())

    def slot_device(self, slot: str) -> str:
        return partition_path(self.disk, PART_A if slot == "A" else PART_B)

    def layout(self) -> Layout:
        data = self.esp.read(bootloader.LAYOUT_PATH) if os.path.exists(self.esp.device) else None
        if data is None:
            raise LayerbootError(f"{self.disk} has no layerboot A/B layout",
                                 hint=f"install it first: layerboot install --disk {self.disk} --profile NAME")
        return Layout.from_json(data.decode("utf-8", "replace"))

    def state(self) -> AbState:
        data = self.esp.read(bootloader.ENV_PATH)
        if data is None:
            raise LayerbootError(f"{self.disk} has no A/B state file ({bootloader.ENV_PATH} on the ESP)",
                                 hint=f"reinstall: layerboot install --disk {self.disk} --profile NAME")
        return AbState.from_env(bootloader.parse_env(data))

    def save_state(self, state: AbState) -> None:
        self.esp.write(bootloader.ENV_PATH, bootloader.format_env(state.to_env()))

    def booted_slot(self, cmdline: str | None = None) -> str | None:
        """The slot this system runs from, by the ``layerboot.slot=UUID=...`` option stage1 was given."""
        if cmdline is None:
            try:
                cmdline = Path("/proc/cmdline").read_text()
            except OSError:
                return None
        wanted = {f"UUID={u}": s for s, u in self.layout().slot_uuids.items()}
        for word in cmdline.split():
            if word.startswith("layerboot.slot="):
                return wanted.get(word.partition("=")[2])
        return None

    # -- slots -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def mounted(self, slot: str, *, writable: bool) -> Iterator[Path]:
        with contextlib.ExitStack() as stack:
            target = Path(stack.enter_context(scratch_dir(self.workdir, prefix="slot.")))
            (target / "mnt").mkdir()
            mount(stack, self.slot_device(slot), target / "mnt", fstype="ext4",
                  options="rw" if writable else "ro,noload")
            yield target / "mnt"

    def write_slot(self, slot: str, source: SlotSource, *, progress: Callable[[str], None] = log.info) -> None:
        """Write a slot from scratch (steps 1-2 of an update); the slot stays ``empty`` until it is activated."""
        layout = self.layout()
        capacity = layout.slot_mib * MiB
        if source.size > capacity * 0.95:
            raise LayerbootError(f"generation {source.manifest.generation} needs {source.size // MiB + 1} MiB, "
                                 f"slot {slot} holds {layout.slot_mib} MiB",
                                 hint="reinstall with a larger --slot-size")
        state = self.state()
        if state.slots[slot].state != "empty":
            self.save_state(state.with_slot(slot, "empty"))
            progress(f"slot {slot} marked empty before it is overwritten")
        mkfs_ext4(self.slot_device(slot), label=f"layerboot-{slot.lower()}", uuid=layout.slot_uuids[slot])
        hashes: dict[str, str] = {}
        with self.mounted(slot, writable=True) as root:
            fs = os.statvfs(root)
            if source.size + 64 * 1024 > fs.f_bavail * fs.f_frsize:
                raise LayerbootError(f"generation {source.manifest.generation} needs {source.size // MiB + 1} MiB, "
                                     f"slot {slot} has {fs.f_bavail * fs.f_frsize // MiB} MiB free after "
                                     "formatting", hint="reinstall with a larger --slot-size")
            with Progress(f"writing slot {slot}", total=source.size) as step:
                for rel, path in source.files.items():
                    step.note(rel)
                    try:
                        hashes[rel] = _copy_synced(path, root / rel, step)
                    except OSError as err:
                        raise LayerbootError(f"writing {rel} into slot {slot} failed: {err.strerror}") from None
            (root / "manifest.json").write_bytes(source.envelope)
            entry = bootloader.slot_entry(layout.slot_uuids[slot], source.manifest.cmdline, source.manifest.profile)
            (root / "boot" / "grub-entry.cfg").write_text(entry)
            expected = expected_files(source.manifest)
            for rel, digest in hashes.items():
                if expected.get(rel) != digest:
                    raise LayerbootError(f"store object for {rel} does not match its digest (damaged store?)",
                                         hint="run 'layerboot store fsck'")
            os.sync()
            record = {"format": SLOT_FORMAT, "profile": source.manifest.profile,
                      "generation": source.manifest.generation, "serial": source.manifest.serial,
                      "manifest_sha256": hashlib.sha256(source.envelope).hexdigest(), "files": hashes,
                      "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with open(root / SLOT_RECORD, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.sync()
        run(["blockdev", "--flushbufs", self.slot_device(slot)], check=False)
        progress(f"slot {slot}: wrote {len(hashes)} files, {source.size // 1024} KiB")

    def verify_slot(self, slot: str, public_key: bytes) -> SlotRecord:
        """Re-read a slot and check every byte against its signed manifest; refuse an incomplete one."""
        with self.mounted(slot, writable=False) as root:
            try:
                record = strictjson.loads((root / SLOT_RECORD).read_bytes(), what=SLOT_RECORD)
                envelope = (root / "manifest.json").read_bytes()
            except (OSError, strictjson.JSONError):
                raise LayerbootError(f"slot {slot} is incomplete: no valid {SLOT_RECORD} (its write did not "
                                     "finish)", hint="write it again with 'layerboot ab update'") from None
            if not isinstance(record, dict) or record.get("format") != SLOT_FORMAT or \
                    record.get("manifest_sha256") != hashlib.sha256(envelope).hexdigest():
                raise LayerbootError(f"slot {slot}: its record does not describe its manifest")
            manifest = verify_manifest(envelope, public_key)
            for rel, digest in expected_files(manifest).items():
                path = root / rel
                if not path.is_file() or sha256_file(path)[0] != digest:
                    raise LayerbootError(f"slot {slot}: {rel} is missing or does not match the signed manifest")
            if not (root / "boot" / "grub-entry.cfg").is_file():
                raise LayerbootError(f"slot {slot}: boot/grub-entry.cfg is missing")
            return SlotRecord(manifest.profile, manifest.generation, manifest.serial, record["manifest_sha256"],
                              dict(record.get("files", {})), record.get("written", ""))

    def read_record(self, slot: str) -> SlotRecord | None:
        """The slot's record without re-hashing (for status); None if the slot has none."""
        with self.mounted(slot, writable=False) as root:
            try:
                r = strictjson.loads((root / SLOT_RECORD).read_bytes(), what=SLOT_RECORD)
                return SlotRecord(r["profile"], r["generation"], r["serial"], r["manifest_sha256"], r["files"],
                                  r["written"])
            except (OSError, strictjson.JSONError, KeyError, TypeError):
                return None

    def activate(self, slot: str, tries: int) -> AbState:
        """Step 4: the verified slot becomes a trial with ``tries`` boots and goes first."""
        if not 1 <= tries <= bootloader.MAX_TRIES:
            raise LayerbootError(f"tries must be 1..{bootloader.MAX_TRIES}, not {tries}")
        state = self.state().with_slot(slot, "trial", tries)
        state = replace(state, order=(slot, other(slot)))
        self.save_state(state)
        return state

    def update(self, source: SlotSource, public_key: bytes, *, tries: int = DEFAULT_TRIES,
               booted: str | None = None, slot: str | None = None,
               progress: Callable[[str], None] = log.info) -> str:
        """Write, verify, then switch: the whole update, into the inactive slot. Returns the slot written."""
        slot = slot or choose_target(self.state(), booted)
        progress(f"updating slot {slot} with {source.manifest.profile} generation {source.manifest.generation}")
        self.write_slot(slot, source, progress=progress)
        self.verify_slot(slot, public_key)
        self.activate(slot, tries)
        progress(f"slot {slot} verified and activated: {tries} boot attempts before falling back")
        return slot

    def switch(self, slot: str) -> AbState:
        """Operator rollback (or roll forward): boot ``slot`` first from now on; only a confirmed slot qualifies."""
        state = self.state()
        if state.slots[slot].state != "good":
            raise LayerbootError(f"slot {slot} is {state.slots[slot].state}; only a good slot can be chosen by hand",
                                 hint="'layerboot ab status' shows both slots")
        state = replace(state, order=(slot, other(slot)))
        self.save_state(state)
        return state

    def mark_good(self, slot: str) -> AbState:
        state = self.state()
        current = state.slots[slot].state
        if current == "good":
            return state
        if current != "trial":
            raise LayerbootError(f"slot {slot} is {current}, not on trial: nothing to confirm",
                                 hint="mark-good confirms the slot this system booted from")
        state = state.with_slot(slot, "good", 0)
        self.save_state(state)
        return state

    def boot_attempt(self) -> str | None:
        """Apply one boot's selection to the stored state, exactly as GRUB would (for tests and 'ab boot')."""
        slot, state = pick_slot(self.state())
        self.save_state(state)
        return slot


# -- the install plan --------------------------------------------------------------------------------------
def read_existing_layout(disk: str) -> Layout | None:
    table = read_table(disk)
    if not table or table.get("label") != "gpt":
        return None
    names = {p.get("name") for p in table.get("partitions", [])}
    if "layerboot-esp" not in names:
        return None
    try:
        return AbDisk(disk).layout()
    except LayerbootError:
        pass
    # an install interrupted before the layout record was written: adopt the filesystems it already made
    found = {n: probe(partition_path(disk, n)) for n in (PART_ESP, PART_A, PART_B, PART_DATA)}
    types = [found[n].get("TYPE") for n in (PART_ESP, PART_A, PART_B, PART_DATA)]
    if types != ["vfat", "ext4", "ext4", "ext4"]:
        return None
    sizes = {p["node"]: p["size"] for p in table["partitions"]}
    slot_mib = sizes.get(partition_path(disk, PART_A), 0) * SECTOR // MiB
    return Layout(found[PART_ESP]["UUID"].replace("-", ""), {"A": found[PART_A]["UUID"], "B": found[PART_B]["UUID"]},
                  found[PART_DATA]["UUID"], slot_mib)


def plan_layout(disk: str, *, slot_mib: int | None = None, wipe: bool = False, data: str = "plain",
                data_disks: tuple[str, ...] = ()) -> tuple[Layout, list[Action]]:
    """Partition and format actions for the A/B layout and its data area (``data``: a kind of
    build/data_layout.py, over partition 5 and ``data_disks``); reuses the UUIDs of a layout already on the disk."""
    existing = None if wipe else read_existing_layout(disk)
    total_mib = disk_size(disk) // MiB
    usable = total_mib - 2 - 1 - ESP_MIB - MIN_DATA_MIB      # GPT areas, BIOS boot, ESP, minimum data
    if existing:
        slot_mib = slot_mib or existing.slot_mib
    if slot_mib is None:
        slot_mib = max(usable * 2 // 5, 0)
    if slot_mib < 32 or 2 * slot_mib > usable:
        raise LayerbootError(f"{disk} ({total_mib} MiB) cannot hold two {slot_mib} MiB slots plus ESP and data",
                             hint="use a larger disk or a smaller --slot-size (at least 32 MiB)")
    area = data_layout(data, disk, data_disks, PART_DATA, existing.data if existing else None)
    if existing and existing.slot_mib == slot_mib:
        layout = replace(existing, data=area)
    else:
        layout = Layout.new(slot_mib, area)
    start_a = 1 + 1 + ESP_MIB
    parts = [Partition("part-bios", PART_BIOS, 1, 1, TYPE_BIOS_BOOT, "layerboot-bios"),
             Partition("part-esp", PART_ESP, 2, ESP_MIB, TYPE_ESP, "layerboot-esp"),
             Partition("part-slot-a", PART_A, start_a, slot_mib, TYPE_LINUX, "layerboot-a"),
             Partition("part-slot-b", PART_B, start_a + slot_mib, slot_mib, TYPE_LINUX, "layerboot-b"),
             Partition("part-data", PART_DATA, start_a + 2 * slot_mib, 0, PART_TYPES[data], "layerboot-data")]
    actions: list[Action] = [DiskLabel("ptable", tuple(p.name for p in parts)), *parts,
                             Format("fmt-esp", PART_ESP, "vfat", "LAYERBOOT", layout.esp_uuid),
                             Format("fmt-slot-a", PART_A, "ext4", "layerboot-a", layout.slot_uuids["A"]),
                             Format("fmt-slot-b", PART_B, "ext4", "layerboot-b", layout.slot_uuids["B"]),
                             *plan_data(area, layout.data_uuid, PART_DATA)]
    return layout, actions


@dataclass
class InstallBootloader(Action):
    """GRUB for BIOS and UEFI, its menu and select script, the layout record; the state only if absent."""

    id: str
    layout: Layout
    type: str = "bootloader"

    def describe(self) -> str:
        return "GRUB (BIOS core.img + UEFI BOOTX64.EFI), menu with slots A/B and boot counting"

    def _wanted(self) -> dict[str, bytes]:
        return {bootloader.LAYOUT_PATH: self.layout.to_json().encode(),
                bootloader.SELECT_PATH: bootloader.select_script().encode(),
                bootloader.CFG_PATH: bootloader.grub_cfg(self.layout.slot_uuids).encode()}

    def satisfied(self, ctx: DiskContext) -> bool:
        esp = Esp(ctx.partition(PART_ESP))
        return (all(esp.read(p) == data for p, data in self._wanted().items())
                and esp.exists(bootloader.EFI_PATH) and esp.exists(bootloader.ENV_PATH))

    def apply(self, ctx: DiskContext) -> None:
        esp = Esp(ctx.partition(PART_ESP))
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(scratch_dir(ctx.workdir, prefix="grub.")))
            (workdir / "data").mkdir()
            # grub-bios-setup wants its images on a filesystem of the disk: the data partition when it is ext4,
            # else slot B (formatted by now; a slot write reformats it anyway)
            stage = PART_DATA if self.layout.data.kind == "plain" else PART_B
            data = mount(stack, ctx.partition(stage), workdir / "data", fstype="ext4")
            stack.callback(shutil.rmtree, data / ".layerboot-grub", ignore_errors=True)
            bootloader.install_bios(ctx.disk, self.layout.esp_fs_uuid(), data / ".layerboot-grub")
            bootloader.install_efi(esp, self.layout.esp_fs_uuid(), workdir)
        for path, data in self._wanted().items():
            esp.write(path, data)
        if esp.read(bootloader.ENV_PATH) is None:
            esp.write(bootloader.ENV_PATH, bootloader.format_env(AbState().to_env()))


@dataclass
class WriteSlot(Action):
    """Write the chain into the inactive slot and verify it (the slot stays unbootable until ``activate``)."""

    id: str
    source: SlotSource
    public_key: bytes
    type: str = "write-image"

    def describe(self) -> str:
        m = self.source.manifest
        return (f"{m.profile} generation {m.generation} (serial {m.serial}, {len(m.layers)} layers, "
                f"{self.source.size // 1024} KiB) into the inactive slot")

    def as_dict(self) -> dict:
        m = self.source.manifest
        return {"id": self.id, "type": self.type, "profile": m.profile, "generation": m.generation,
                "serial": m.serial, "files": sorted(self.source.files)}

    def satisfied(self, ctx: DiskContext) -> bool:
        disk = AbDisk(ctx.disk, workdir=ctx.workdir)
        wanted = hashlib.sha256(self.source.envelope).hexdigest()
        state = disk.state()
        for slot in SLOTS:
            if state.slots[slot].state in ("good", "trial"):
                record = disk.read_record(slot)
                if record and record.manifest_sha256 == wanted:
                    ctx.values["slot"], ctx.values["already"] = slot, True
                    return True
        return False

    def apply(self, ctx: DiskContext) -> None:
        disk = AbDisk(ctx.disk, workdir=ctx.workdir)
        slot = choose_target(disk.state(), ctx.values.get("booted"))
        disk.write_slot(slot, self.source, progress=lambda line: log.info("%s", line))
        disk.verify_slot(slot, self.public_key)
        ctx.values["slot"] = slot


@dataclass
class Activate(Action):
    """Flip the state: the freshly written slot goes first, on trial with ``tries`` boot attempts."""

    id: str
    tries: int
    type: str = "activate"

    def describe(self) -> str:
        return f"boot the new slot first, {self.tries} attempts before falling back"

    def satisfied(self, ctx: DiskContext) -> bool:
        return bool(ctx.values.get("already"))

    def apply(self, ctx: DiskContext) -> None:
        slot = ctx.values.get("slot")
        if not slot:
            raise LayerbootError("nothing to activate: no slot was written")
        AbDisk(ctx.disk, workdir=ctx.workdir).activate(slot, self.tries)


def plan_install(disk: str, source: SlotSource, public_key: bytes, *, slot_mib: int | None = None,
                 tries: int = DEFAULT_TRIES, wipe: bool = False, data: str = "plain",
                 data_disks: tuple[str, ...] = ()) -> list[Action]:
    layout, actions = plan_layout(disk, slot_mib=slot_mib, wipe=wipe, data=data, data_disks=data_disks)
    # A data area beyond plain ext4 is built after the bootloader action has recorded it in layout.json, so an
    # interrupted run finds its array UUID there and resumes (assembles) instead of refusing its own members.
    split = len(actions) if layout.data.kind == "plain" else [a.id for a in actions].index("fmt-slot-b") + 1
    return [*actions[:split], InstallBootloader("bootloader", layout), *actions[split:],
            WriteSlot("write-slot", source, public_key), Activate("activate", tries)]
