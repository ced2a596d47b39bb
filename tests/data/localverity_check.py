"""stage1's localverity against the real kernel: run where loop devices and dm-verity exist (a QEMU node booted
from an A/B slot, whose slot holds layers and their trees; or a host with dm-verity).

    python3 localverity_check.py SLOT_ROOT WORKDIR

Takes the smallest layer the slot's signed manifest names with a non-empty tree (a boot test's time), copies it and its tree to
WORKDIR (a tmpfs), and checks: the good copy attaches, mounts as squashfs and every file reads; the same copy
with one byte flipped in a block past the first still attaches, but reading that block through the device is
EIO and every byte before it is the good one (no silent data); a wrong root hash is refused at attach and leaves
no device; a tree of the wrong size is refused. Prints ``LOCALVERITY-CHECK-PASS`` with the attach time and the
time a SHA-256 of the whole layer takes (what a slot boot did before), or ``LOCALVERITY-CHECK-FAIL: why``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from layerboot.initrd.stage1 import localverity
from layerboot.initrd.stage1.dm import remove

def fail(why: str) -> None:
    print(f"LOCALVERITY-CHECK-FAIL: {why}", flush=True)
    sys.exit(1)


def pick(slot: str) -> tuple[str, dict]:
    with open(os.path.join(slot, "manifest.json"), "rb") as f:
        payload = json.loads(json.loads(f.read())["payload"])
    layers = [l for l in payload["layers"] if l.get("verity") and l["verity"]["tree_size"] and l["size"] % 4096 == 0]
    if not layers:
        fail("the slot's manifest names no layer with a dm-verity tree")
    layer = min(layers, key=lambda l: l["size"])
    return os.path.join(slot, "layers", layer["digest"]), layer


def dm_names() -> set[str]:
    names = set()
    for block in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{block}/dm/name") as f:
                names.add(f.read().strip())
        except OSError:
            pass
    return names


def attach(path: str, tree: str, layer: dict, name: str, root: str = "") -> str:
    verity = layer["verity"]
    return localverity.attach(path, tree, layer["size"], root or verity["root"], verity["tree_size"], name=name)


def read_device(device: str) -> tuple[bytes, int]:
    """The bytes read through ``device`` until the first error; and that error's errno (0: none)."""
    out = bytearray()
    fd = os.open(device, os.O_RDONLY)
    try:
        while True:
            try:
                chunk = os.pread(fd, 4096, len(out))
            except OSError as err:
                return bytes(out), err.errno
            if not chunk:
                return bytes(out), 0
            out += chunk
    finally:
        os.close(fd)


def main() -> None:
    slot, work = sys.argv[1], sys.argv[2]
    source, layer = pick(slot)
    os.makedirs(work, exist_ok=True)
    good, tree = os.path.join(work, "good"), os.path.join(work, "good.verity")
    shutil.copyfile(source, good)
    shutil.copyfile(localverity.tree_path(source), tree)
    with open(good, "rb") as f:
        original = f.read()

    started = time.monotonic()
    device = attach(good, tree, layer, "lvcheck-good")
    attach_s = time.monotonic() - started
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-t", "squashfs", "-o", "ro", device, mnt], check=True)
    files = 0
    for top, _, names in os.walk(mnt):
        for name in names:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    f.read()
                files += 1
    subprocess.run(["umount", mnt], check=True)
    data, error = read_device(device)
    if error or data[:len(original)] != original:
        fail(f"the good layer read back {len(data)} bytes, error {error}")
    remove("lvcheck-good")

    started = time.monotonic()
    digest = hashlib.sha256(original).hexdigest()
    hash_s = time.monotonic() - started
    if digest != layer["digest"]:
        fail("the copied layer does not match its digest")

    flipped = os.path.join(work, "flipped")
    at = (len(original) // 4096 // 2) * 4096 + 123         # a block in the middle, never the first
    changed = bytearray(original)
    changed[at] ^= 0x01
    with open(flipped, "wb") as f:
        f.write(changed)
    device = attach(flipped, tree, layer, "lvcheck-flipped")
    data, error = read_device(device)
    remove("lvcheck-flipped")
    if error != errno.EIO or len(data) != at // 4096 * 4096 or data != original[:len(data)]:
        fail(f"a flipped byte at {at}: read {len(data)} bytes then error {error}, not EIO at block {at // 4096}")

    wrong = layer["verity"]["root"][:-1] + ("0" if layer["verity"]["root"][-1] != "0" else "1")
    try:
        attach(good, tree, layer, "lvcheck-wrong", root=wrong)
        fail("a wrong root hash was accepted")
    except localverity.VerityRefused as err:
        refused = str(err)
    if "lvcheck-wrong" in dm_names():
        fail("a refused attach left its device behind")

    short = os.path.join(work, "short.verity")
    with open(short, "wb") as f:
        f.write(open(tree, "rb").read()[:-4096])
    try:
        attach(good, short, layer, "lvcheck-short")
        fail("a short tree was accepted")
    except localverity.VerityRefused:
        fail("a short tree reached dm-verity")
    except localverity.LocalVerityError as err:
        short_error = str(err)
    print(f"LOCALVERITY-CHECK-PASS mb={len(original) / 1e6:.1f} files={files} attach_ms={attach_s * 1000:.1f} "
          f"sha256_ms={hash_s * 1000:.1f} eio_block={at // 4096}", flush=True)
    print(f"LOCALVERITY-WRONG-ROOT: {refused}", flush=True)
    print(f"LOCALVERITY-SHORT-TREE: {short_error}", flush=True)


if __name__ == "__main__":
    main()
