"""``layerboot demo``: the main job on an embedded default, end to end on this machine.

Builds a store in a work directory, a busybox base and two overlay layers (one adds files, one deletes a base
file with a whiteout), composes a profile, prints the signed manifest, verifies it, and — as root — mounts
the chain with overlayfs and shows the merged view a node would boot.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.errors import LayerbootError
from layerboot.overlays.chain import mount_chain
from layerboot.overlays.keys import generate_key, load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.tools.context import Context

MARKER = ".layerboot-demo"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="build a store, layers and a profile on an embedded default and show it",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-demo"),
                        help="where the demo store goes (recreated on each run; default %(default)s)")
    parser.set_defaults(func=cmd_demo)


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _fresh_workdir(workdir: Path) -> None:
    if workdir.exists():
        if not (workdir / MARKER).exists():
            raise LayerbootError(f"{workdir} exists and was not made by 'layerboot demo'; refusing to delete it",
                                 hint="pass another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by layerboot demo\n")


def _overlay_tree(root: Path, files: dict[str, str], whiteouts: tuple[str, ...] = ()) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel in whiteouts:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mknod(root / rel, 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs whiteout: char device 0/0
    return root


def cmd_demo(ctx: Context) -> int:
    workdir: Path = ctx.args.workdir.resolve()
    _fresh_workdir(workdir)
    paths = Paths(workdir / "store")
    store = Store(paths)
    step(f"creating a layer store in {paths.root}")
    store.init()
    key_id = generate_key(paths.signing_key, paths.public_key)
    print(f"    signing key {key_id}")
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        step("building a busybox base tree and packing it with mksquashfs (zstd)")
        base_tree = build_busybox_tree(Path(scratch) / "base")
        (base_tree / "etc/issue").write_text("layerboot base\n")
        base = store.import_tree(base_tree, kind="base", description="busybox base", all_root=True)
        print(f"    base     {base.short}  {base.size} bytes")
        step("building two overlay layers: one adds files, one deletes /etc/issue with a whiteout")
        motd = _overlay_tree(Path(scratch) / "motd", {"etc/motd": "hello from layer 1\n"})
        layer1 = store.import_tree(motd, kind="overlay", base=base.digest, parent=base.digest,
                                   description="adds /etc/motd", all_root=True)
        tidy = _overlay_tree(Path(scratch) / "tidy", {"etc/motd": "hello from layer 2\n"}, ("etc/issue",))
        layer2 = store.import_tree(tidy, kind="overlay", base=base.digest, parent=layer1.digest,
                                   description="rewrites motd, removes issue", all_root=True)
        print(f"    overlay  {layer1.short}  {layer1.description}\n    overlay  {layer2.short}  {layer2.description}")
    step("composing profile 'demo' (three generations)")
    profiles = Profiles(store)
    profiles.create("demo", base.digest, cmdline="console=ttyS0")
    profiles.add("demo", layer1.digest)
    gen = profiles.add("demo", layer2.digest)
    for g in profiles.history("demo"):
        print(f"    generation {g.number}: {g.action} (serial {g.serial})")
    step(f"signed manifest for generation {gen.number} ({profiles.manifest_path('demo', gen.number)})")
    signed = profiles.signed_manifest("demo")
    print(signed.decode().rstrip())
    manifest = verify_manifest(signed, load_public_key(paths.public_key))
    step(f"signature verified: serial {manifest.serial}, {len(manifest.layers)} layers, base first")
    if os.geteuid() != 0:
        print("    (not root: skipping the overlayfs mount of the chain)")
        return 0
    step("mounting the chain with loop devices + overlayfs, as a node would")
    with contextlib.ExitStack() as stack:
        merged = mount_chain(stack, [store.path(a.digest) for a in manifest.layers], workdir / "mnt")
        motd_text = (merged / "etc/motd").read_text().strip()
        print(f"    /etc/motd  -> {motd_text!r} (layer 2 shadows layer 1)")
        print(f"    /etc/issue -> {'present' if (merged / 'etc/issue').exists() else 'gone (whiteout)'}")
        print(f"    /bin/sh    -> {os.readlink(merged / 'bin/sh')} (from the base)")
    print(f"\ndone: store in {paths.root}; try 'layerboot --store {paths.root} profile log demo'")
    return 0
