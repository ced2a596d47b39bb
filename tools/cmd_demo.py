"""``layerboot demo``: the main job on an embedded default, end to end on this machine (as root).

1. builds a store in the work directory: a busybox base, two overlay layers (one adds /etc/motd, one rewrites
   it and deletes /etc/issue with a whiteout), and the client layer (python3 + layerboot's capture/upload);
2. fetches Debian's cloud kernel (cached), builds the initramfs with dracut (cached by its inputs), composes
   profile 'demo', prints the signed manifest and verifies it, mounts the chain as a node would stack it;
3. starts layerbootd on loopback, registers a node by MAC, and PXE-boots it in QEMU (TCG) through the NIC's
   iPXE ROM: stage1 verifies and stacks the layers, the node shows them, changes a file, captures and uploads
   the change; the server bakes it into generation N+1; the node reboots and shows the change.

--store-only stops after step 2 without the kernel and initrd (no QEMU, a few seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from layerboot.build.busybox_tree import build_busybox_tree
from layerboot.build.client_layer import client_layer_image
from layerboot.build.initrd import DEFAULT_CACHE as INITRD_CACHE
from layerboot.build.initrd import build_initrd
from layerboot.build.kernel import fetch_kernel
from layerboot.errors import LayerbootError
from layerboot.overlays.chain import mount_chain
from layerboot.overlays.keys import generate_key, load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.tools.context import Context
from layerboot.tools.parser import examples
from layerboot.tools.demo_netboot import NODE_CMDLINE, NODE_INIT, DemoNode, boot_node, running_daemon

MARKER = ".layerboot-demo"
CLIENT_CACHE = Path("/var/cache/layerboot/demo")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="build a store, layers and a profile on an embedded default and show it",
                            description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/layerboot-demo"),
                        help="where the demo store goes (recreated on each run; default %(default)s)")
    parser.add_argument("--store-only", action="store_true",
                        help="build and show the store, profile and manifest only; no initrd, server or QEMU")
    parser.set_defaults(func=cmd_demo)
    examples(parser, "layerboot demo                       # as root: the whole job, a QEMU node included",
             "layerboot demo --store-only --workdir /tmp/demo")


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


def _build_layers(store: Store, scratch: Path, *, with_client: bool) -> list[str]:
    """The demo's layers, base first: busybox base, two overlays, and (for a booting node) the client layer."""
    step("building a busybox base tree and packing it with mksquashfs (zstd)")
    base_tree = build_busybox_tree(scratch / "base", init_script=NODE_INIT if with_client else None)
    (base_tree / "etc/issue").write_text("layerboot base\n")
    base = store.import_tree(base_tree, kind="base", description="busybox base", all_root=True)
    print(f"    base     {base.short}  {base.size} bytes")
    step("building two overlay layers: one adds files, one deletes /etc/issue with a whiteout")
    motd = _overlay_tree(scratch / "motd", {"etc/motd": "hello from layer 1\n"})
    layer1 = store.import_tree(motd, kind="overlay", base=base.digest, parent=base.digest,
                               description="adds /etc/motd", all_root=True)
    tidy = _overlay_tree(scratch / "tidy", {"etc/motd": "hello from layer 2\n"}, ("etc/issue",))
    layer2 = store.import_tree(tidy, kind="overlay", base=base.digest, parent=layer1.digest,
                               description="rewrites motd, removes issue", all_root=True)
    print(f"    overlay  {layer1.short}  {layer1.description}\n    overlay  {layer2.short}  {layer2.description}")
    layers = [base.digest, layer1.digest, layer2.digest]
    if with_client:
        step("building the client layer (python3 + layerboot capture/upload for the busybox node; cached)")
        image = client_layer_image(scratch / "client.squashfs", cache=CLIENT_CACHE)
        client = store.import_squashfs(image, kind="overlay", base=base.digest, source="build/client_layer",
                                       description="layerboot client: python3, capture, upload")
        print(f"    overlay  {client.short}  {client.description} ({client.size // 1024 // 1024} MiB)")
        layers.append(client.digest)
    return layers


def _boot_files(store: Store, paths: Paths, scratch: Path) -> tuple[str, str]:
    """Debian's cloud kernel and our dracut initramfs (trusting this store's key), imported into the store."""
    step("fetching Debian's linux-image-cloud-amd64 (apt-get download + dpkg -x; cached)")
    kernel = fetch_kernel()
    print(f"    kernel   {kernel.version}")
    step("building the initramfs with dracut: Python stage1, its stdlib as .pyc, busybox, modules, public key")
    initrd = build_initrd(kernel, paths.public_key, scratch / "initrd.img", cache=INITRD_CACHE)
    print(f"    initrd   {initrd.size / 1e6:.1f} MB ({'cached' if initrd.cached else f'{initrd.seconds:.0f} s'})")
    kernel_layer = store.import_boot_file(kernel.image, kind="kernel", description=f"Debian {kernel.version}")
    initrd_layer = store.import_boot_file(initrd.path, kind="initrd", description="layerboot stage1 (dracut)")
    return kernel_layer.digest, initrd_layer.digest


def _show_chain(store: Store, manifest_layers: list[str], workdir: Path) -> None:
    step("mounting the chain with loop devices + overlayfs, as a node would")
    with contextlib.ExitStack() as stack:
        merged = mount_chain(stack, [store.path(d) for d in manifest_layers], workdir / "mnt")
        motd_text = (merged / "etc/motd").read_text().strip()
        print(f"    /etc/motd  -> {motd_text!r} (layer 2 shadows layer 1)")
        print(f"    /etc/issue -> {'present' if (merged / 'etc/issue').exists() else 'gone (whiteout)'}")
        print(f"    /bin/sh    -> {os.readlink(merged / 'bin/sh')} (from the base)")


def cmd_demo(ctx: Context) -> int:
    store_only: bool = ctx.args.store_only
    if not store_only and os.geteuid() != 0:
        raise LayerbootError("the netboot demo needs root (loop devices, mounts, dracut)",
                             hint="run it as root, or add --store-only")
    workdir: Path = ctx.args.workdir.resolve()
    _fresh_workdir(workdir)
    paths = Paths(workdir / "store")
    store = Store(paths)
    step(f"creating a layer store in {paths.root}")
    store.init()
    key_id = generate_key(paths.signing_key, paths.public_key)
    print(f"    signing key {key_id}")
    profiles = Profiles(store)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scratch = Path(tmp)
        layers = _build_layers(store, scratch, with_client=not store_only)
        boot = None if store_only else _boot_files(store, paths, scratch)
    step(f"composing profile 'demo' ({len(layers)} layers, one generation per change)")
    if boot is None:
        profiles.create("demo", layers[0], cmdline="console=ttyS0")
    else:
        profiles.create("demo", layers[0], cmdline=NODE_CMDLINE, kernel=boot[0], initrd=boot[1])
    for digest in layers[1:]:
        profiles.add("demo", digest)
    gen = profiles.current("demo")
    for g in profiles.history("demo"):
        print(f"    generation {g.number}: {g.action} (serial {g.serial})")
    step(f"signed manifest for generation {gen.number} ({profiles.manifest_path('demo', gen.number)})")
    signed = profiles.signed_manifest("demo")
    envelope = json.loads(signed)
    print(json.dumps(json.loads(envelope["payload"]), indent=1))
    print(f"    signed by key {envelope['key_id']}: {envelope['signature'][:32]}... (Ed25519 over the payload)")
    manifest = verify_manifest(signed, load_public_key(paths.public_key))
    step(f"signature verified: serial {manifest.serial}, {len(manifest.layers)} layers, base first")
    if os.geteuid() != 0:
        print("    (not root: skipping the overlayfs mount of the chain)")
        return 0
    _show_chain(store, [a.digest for a in manifest.layers], workdir)
    if store_only:
        print(f"\ndone: store in {paths.root}; try 'layerboot --store {paths.root} profile log demo'")
        return 0
    return _netboot(paths, profiles, workdir)


def _netboot(paths: Paths, profiles: Profiles, workdir: Path) -> int:
    from layerboot.server.db import connect
    from layerboot.server.nodes import Registry

    node = DemoNode()
    # The asset key is the DMI UUID and serial QEMU gives the node: stage1 proves it to claim its secret.
    Registry(connect(paths.database)).register(node.mac, "demo", replace=True, asset_key=node.asset_key)
    before = profiles.current("demo").number
    with running_daemon(paths, workdir) as port:
        step(f"layerbootd serving the store on 127.0.0.1:{port}; node {node.mac} registered for profile 'demo' "
             f"with asset key {node.asset_key}")
        step("PXE-booting the node in QEMU (TCG): iPXE ROM -> TFTP -> /boot/<mac>.ipxe -> kernel + initrd -> "
             "stage1")
        serial_log = boot_node(port, workdir, node)
    after = profiles.current("demo")
    if after.number != before + 1:
        raise LayerbootError(f"the node's upload did not become a new generation (still {after.number})",
                             hint=f"see {workdir / 'layerbootd.log'}")
    step(f"the node's change became layer {after.layers[-1][:12]} in generation {after.number}, and it booted it")
    print(f"""
done. Where things are:
  store           {paths.root}   (layerboot --store {paths.root} profile log demo)
  server log      {workdir / 'layerbootd.log'}
  node console    {serial_log}
  node reports    layerboot --store {paths.root} nodes show {node.mac}""")
    return 0
