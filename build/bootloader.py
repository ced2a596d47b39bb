"""GRUB on an A/B disk: core images for BIOS and UEFI, the boot-counting script, and the ESP's files.

Why GRUB: it is installable from Debian without touching the host's own boot (``grub-pc-bin`` and
``grub-efi-amd64-bin`` only ship images and modules), it boots the same kernel + initrd on BIOS (QEMU's SeaBIOS)
and UEFI (OVMF), it reads ext4 slots directly, and its environment block (grubenv) can be rewritten by GRUB
itself at boot, which is what boot counting needs: the tries left must go down *before* the kernel starts, or
a kernel that hangs would be retried forever. systemd-boot counts tries by renaming entry files, which needs
the entries on the ESP and a UEFI machine; GRUB covers both firmwares with one script.

The ESP is FAT and is never mounted: every file on it is read and written with mtools (``mcopy``, ``mtype``,
``mmove``). This works where the running kernel has no vfat driver (CI machines, minimal node kernels) and keeps
layerboot away from the host's mount table.

Files on the ESP (vfat, volume id fixed at format time so GRUB finds it with ``search --fs-uuid``)::

    EFI/BOOT/BOOTX64.EFI          UEFI removable-path GRUB (no NVRAM entry needed)
    grub/grub.cfg                 menu: one entry per slot, default chosen by the script below
    grub/layerboot-select.cfg     the boot-counting script (generated from :func:`select_script`)
    grub/layerboot.env            the A/B state: a 1024-byte GRUB environment block
    layerboot/layout.json         which partition and filesystem UUID each slot has

BIOS: ``boot.img`` goes into the MBR and ``core.img`` into the 1 MiB BIOS-boot partition (``grub-bios-setup``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.cmdline import grub_words
from layerboot.run import require_tool, run, tool_path

log = logging.getLogger("layerboot.bootloader")

GRUB_LIB = Path("/usr/lib/grub")
ENV_PATH = "grub/layerboot.env"
CFG_PATH = "grub/grub.cfg"
SELECT_PATH = "grub/layerboot-select.cfg"
EFI_PATH = "EFI/BOOT/BOOTX64.EFI"
LAYOUT_PATH = "layerboot/layout.json"
ENV_SIZE = 1024
ENV_HEADER = "# GRUB Environment Block\n"
MAX_TRIES = 9
SLOTS = ("A", "B")
# Everything GRUB needs is linked into the core image: the ESP carries no module directory to keep in step.
COMMON_MODULES = ("part_gpt", "fat", "ext2", "search", "search_fs_uuid", "normal", "configfile", "loadenv",
                  "test", "echo", "linux", "halt", "reboot", "sleep", "serial", "terminal", "true")
TARGET_MODULES = {"i386-pc": ("biosdisk",), "x86_64-efi": ("efi_gop", "efi_uga")}
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
_ENV_VALUE = re.compile(r"^[A-Za-z0-9 ._:=/-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- the environment block ---------------------------------------------------------------------------------
def format_env(values: Mapping[str, str]) -> bytes:
    """A GRUB environment block: header, ``key=value`` lines, '#' padding to exactly 1024 bytes.

    GRUB's ``save_env`` rewrites the block in place and insists on this size, so it is never shorter or longer.
    """
    lines = [ENV_HEADER]
    for key, value in values.items():
        if not _ENV_KEY.fullmatch(key) or not _ENV_VALUE.fullmatch(value):
            raise LayerbootError(f"grub environment entry {key}={value!r} has characters GRUB would escape")
        lines.append(f"{key}={value}\n")
    body = "".join(lines).encode("ascii")
    if len(body) > ENV_SIZE:
        raise LayerbootError("grub environment block would exceed 1024 bytes")
    return body + b"#" * (ENV_SIZE - len(body))


def parse_env(data: bytes) -> dict[str, str]:
    """Read a GRUB environment block (also one GRUB rewrote), refusing anything that is not one."""
    if len(data) != ENV_SIZE or not data.startswith(ENV_HEADER.encode()):
        raise LayerbootError("the A/B state file is not a 1024-byte GRUB environment block (damaged?)",
                             hint="'layerboot ab status' shows the disk; reinstall with 'layerboot install'")
    values: dict[str, str] = {}
    for line in data.decode("ascii", "replace").splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key] = value
    return values


# -- the ESP through mtools -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Esp:
    """A FAT partition accessed without mounting it."""

    device: str

    def _argv(self, tool: str, *args: str) -> list[str]:
        return [require_tool(tool, package="mtools"), "-i", self.device, *args]

    def read(self, path: str) -> bytes | None:
        """The file's bytes; ``path.new`` when only that exists (a replacement cut off before its rename)."""
        for name in (path, f"{path}.new"):
            result = run(self._argv("mcopy", "-n", f"::/{name}", "-"), env=MTOOLS_ENV, check=False)
            if result.returncode == 0:
                return result.stdout
        return None

    def makedirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            run(self._argv("mmd", "-D", "s", "::/" + "/".join(parts[:i])), env=MTOOLS_ENV, check=False)

    def write(self, path: str, data: bytes) -> None:
        """Replace ``path``: write and flush ``path.new``, delete ``path``, rename ``path.new`` to ``path``.

        FAT has no atomic rename-over, so there is a moment with only ``path.new``; it is complete and on disk by
        then, and both readers (:meth:`read` and GRUB's select script) fall back to it. A cut before the delete
        leaves the old file in place and a stale ``path.new`` that the next write overwrites.
        """
        self.makedirs(os.path.dirname(path))
        new = f"::/{path}.new"
        with tempfile.NamedTemporaryFile(prefix="layerboot-esp.") as tmp:
            tmp.write(data)
            tmp.flush()
            run(self._argv("mcopy", "-o", "-D", "o", tmp.name, new), env=MTOOLS_ENV)
        os.sync()                              # mtools writes through the page cache of the device
        run(self._argv("mdel", f"::/{path}"), env=MTOOLS_ENV, check=False)
        os.sync()
        run(self._argv("mren", new, f"::/{path}"), env=MTOOLS_ENV)
        os.sync()

    def exists(self, path: str) -> bool:
        return run(self._argv("mdir", "-b", f"::/{path}"), env=MTOOLS_ENV, check=False).returncode == 0


# -- GRUB scripts ------------------------------------------------------------------------------------------
def select_script() -> str:
    """The boot-counting script GRUB runs before the menu; it must behave exactly like ``ab.pick_slot``.

    For each slot in ``lb_order``: a ``good`` slot boots; a ``trial`` slot with tries left boots after its count
    goes down by one (saved before the kernel starts); a ``trial`` slot with none left becomes ``bad`` and the next
    slot is considered. GRUB has no arithmetic, so the decrement is spelled out for 1..MAX_TRIES.
    """
    out = ["# layerboot A/B slot selection (generated by layerboot; do not edit)",
           'set lb_order="A B"']
    for slot in SLOTS:
        out += [f"set lb_{slot}_state=empty", f"set lb_{slot}_tries=0"]
    out += ['set lb_booted=""',
            # Linux replaces the block by writing layerboot.env.new, deleting the old one and renaming: in between
            # only the .new file exists, and it is complete
            'if [ -f "$lb_env" ]; then true; else set lb_env="$lb_env.new"; fi',
            "load_env -f $lb_env",
            'set lb_pick=""',
            "for lb_s in $lb_order; do",
            '  if [ -z "$lb_pick" ]; then']
    for slot in SLOTS:
        out += [f'    if [ "$lb_s" = "{slot}" ]; then',
                f'      if [ "$lb_{slot}_state" = "good" ]; then',
                f"        set lb_pick={slot}",
                f'      elif [ "$lb_{slot}_state" = "trial" ]; then']
        for n in range(MAX_TRIES, 0, -1):
            keyword = "if" if n == MAX_TRIES else "elif"
            out += [f'        {keyword} [ "$lb_{slot}_tries" = "{n}" ]; then',
                    f"          set lb_{slot}_tries={n - 1}",
                    f"          set lb_pick={slot}"]
        out += ["        else",
                f"          set lb_{slot}_state=bad",
                f"          set lb_{slot}_tries=0",
                "        fi",
                "      fi",
                "    fi"]
    out += ["  fi",
            "done",
            'set lb_booted="$lb_pick"',
            "save_env -f $lb_env " + " ".join(f"lb_{s}_state lb_{s}_tries" for s in SLOTS) + " lb_booted",
            ""]
    return "\n".join(out)


def grub_cfg(slot_uuids: Mapping[str, str], *, timeout: int = 2) -> str:
    """The menu: runs the selection script, then boots the chosen slot's own ``boot/grub-entry.cfg``.

    The slot carries its entry (kernel, initrd, command line), so an update changes the kernel command line
    without touching the ESP. A good other slot is GRUB's ``fallback`` if the chosen one fails to load.
    """
    out = ["# layerboot A/B menu (generated by layerboot; do not edit)",
           "serial --unit=0 --speed=115200",
           "terminal_input serial console",
           "terminal_output serial console",
           f"set timeout={timeout}",
           "set lb_env=$prefix/layerboot.env",
           "source $prefix/layerboot-select.cfg"]
    first = True
    for slot in SLOTS:
        other = SLOTS[1 - SLOTS.index(slot)]
        out += [f'{"if" if first else "elif"} [ "$lb_pick" = "{slot}" ]; then',
                f"  set default=slot-{slot}",
                f'  if [ "$lb_{other}_state" = "good" ]; then set fallback=slot-{other}; fi']
        first = False
    out += ["else",
            '  echo "layerboot: no bootable slot (A: $lb_A_state, B: $lb_B_state); pick an entry by hand"',
            "  set timeout=-1",
            "fi"]
    for slot in SLOTS:
        out += [f'menuentry "layerboot slot {slot}" --id slot-{slot} {{',
                f"  search --no-floppy --fs-uuid --set=root {slot_uuids[slot]}",
                "  source ($root)/boot/grub-entry.cfg",
                "}"]
    return "\n".join(out) + "\n"


# Put before the profile's command line (which may override them: the last occurrence wins, for the kernel and
# for stage1): a slot that fails must reboot, not wait at a console or a panic, or GRUB's tries never run out.
SLOT_DEFAULTS = "panic=10 layerboot.emergency=reboot"


def slot_entry(slot_uuid: str, cmdline: str, profile: str) -> str:
    """``boot/grub-entry.cfg`` inside a slot: its kernel, initrd, the ``layerboot.slot=`` option for stage1 and
    ``layerboot.profile=`` (stage1 refuses a slot whose signed manifest is another profile's).

    Every word is single-quoted for GRUB's script parser (overlays/cmdline.grub_words), so a profile's command
    line cannot run GRUB commands or expand GRUB variables."""
    args = f"layerboot.slot=UUID={slot_uuid} layerboot.profile={profile} {SLOT_DEFAULTS} {cmdline}".strip()
    return f"linux /boot/vmlinuz {grub_words(args)}\ninitrd /boot/initrd.img\n"


def early_cfg(esp_fs_uuid: str) -> str:
    """Embedded in the core images: find the ESP by its volume id, whatever the disk's BIOS/UEFI name."""
    return f"search --no-floppy --fs-uuid --set=root {esp_fs_uuid}\nset prefix=($root)/grub\n"


# -- installing --------------------------------------------------------------------------------------------
def make_core_image(target: str, esp_fs_uuid: str, output: Path) -> Path:
    """Build a GRUB core image for ``target`` (i386-pc or x86_64-efi) with every module linked in."""
    directory = GRUB_LIB / target
    if not directory.is_dir():
        package = "grub-pc-bin" if target == "i386-pc" else "grub-efi-amd64-bin"
        raise LayerbootError(f"GRUB {target} modules are not installed ({directory})",
                             hint=f"install the Debian package {package!r}")
    mkimage = require_tool("grub-mkimage", package="grub-common")
    early = output.with_suffix(".early.cfg")
    early.write_text(early_cfg(esp_fs_uuid))
    run([mkimage, "-O", target, "-d", directory, "-p", "/grub", "-c", early, "-o", output,
         *COMMON_MODULES, *TARGET_MODULES[target]])
    return output


def install_bios(disk: str, esp_fs_uuid: str, stage: Path) -> None:
    """MBR boot code + core.img in the BIOS-boot partition (grub-bios-setup finds it by its GPT type).

    ``stage`` must be a directory on a filesystem of ``disk`` itself: grub-bios-setup derives "the root device"
    from where its images lie and fails when that is a disk outside its device map (the build host's own).
    """
    setup = tool_path("grub-bios-setup", GRUB_LIB / "i386-pc")   # Debian keeps it beside the modules
    if setup is None:
        raise LayerbootError("grub-bios-setup is not installed", hint="install the Debian package 'grub-pc-bin'")
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "boot.img").write_bytes((GRUB_LIB / "i386-pc" / "boot.img").read_bytes())
    make_core_image("i386-pc", esp_fs_uuid, stage / "core.img")
    (stage / "device.map").write_text(f"(hd0) {disk}\n")
    run([setup, "--skip-fs-probe", "-m", stage / "device.map", "-d", stage, "-b", "boot.img", "-c", "core.img",
         disk])


def install_efi(esp: Esp, esp_fs_uuid: str, workdir: Path) -> None:
    image = make_core_image("x86_64-efi", esp_fs_uuid, workdir / "BOOTX64.EFI")
    esp.write(EFI_PATH, image.read_bytes())
