"""``layerboot base``: make a base layer from debootstrap or from a distribution's live ISO.

A base from a directory tree is ``layerboot layer import DIR`` (kind base is the default there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layerboot.tools.context import Context
from layerboot.tools.output import human_size
from layerboot.tools.parser import examples


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("base", help="build a base layer with debootstrap or take one from a live ISO",
                            description="Make base layers. For a directory tree use 'layerboot layer import DIR'.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="where the base comes from")

    deb = actions.add_parser(
        "debootstrap", help="Debian minbase + init + the node-side layerboot client, as a base layer",
        description="Run debootstrap (variant minbase) from the host's apt mirror, add systemd-sysv, python3 and "
                    "the layerboot node client, and import the tree as a base layer. Downloads are cached "
                    "(--cache-dir), so a rebuild does not touch the network. Prints the new layer's digest.")
    deb.add_argument("--suite", default="bookworm", help="Debian suite (default: bookworm)")
    deb.add_argument("--mirror", metavar="URL", help="Debian mirror (default: the host's, from /etc/apt)")
    deb.add_argument("--arch", metavar="ARCH", help="Debian architecture (default: the host's, e.g. amd64)")
    deb.add_argument("--include", action="append", default=[], metavar="PKG[,PKG...]",
                     help="extra Debian packages to install (repeatable)")
    deb.add_argument("--cache-dir", type=Path, metavar="DIR",
                     help="where downloads are kept (default: /var/cache/layerboot/debootstrap)")
    deb.add_argument("-d", "--description", default="", help="free text shown by 'layer list'")
    deb.set_defaults(func=cmd_debootstrap)
    examples(deb, "layerboot base debootstrap -d 'bookworm minbase'",
             "layerboot base debootstrap --include openssh-server,vim-tiny --mirror http://deb.debian.org/debian")

    iso = actions.add_parser(
        "import-iso", help="import a live ISO's root filesystem, kernel and initrd",
        description="Decompose a live ISO (Debian live, Ubuntu, Fedora LiveOS, Arch): its squashfs becomes a "
                    "base layer, its kernel and initrd boot files. Prints the three digests.")
    iso.add_argument("iso", type=Path, metavar="FILE.iso", help="the live ISO, as downloaded")
    iso.add_argument("--squashfs", metavar="PATH", help="path of the root filesystem inside the ISO")
    iso.add_argument("--kernel", metavar="PATH", help="path of the kernel inside the ISO")
    iso.add_argument("--initrd", metavar="PATH", help="path of the initrd inside the ISO")
    iso.add_argument("-d", "--description", default="", help="free text for the base layer")
    iso.set_defaults(func=cmd_import_iso)

    oci = actions.add_parser(
        "import-oci", help="import an OCI image (archive or layout) as a base, or as one layer per image layer",
        description="Import an OCI image from an OCI archive (.tar, e.g. 'skopeo copy docker://debian:12 "
                    "oci-archive:debian.tar' or 'podman save --format oci-archive') or an OCI layout directory. "
                    "By default the image's layers are flattened into one base layer (umoci applies them in "
                    "order). With --layers every image layer becomes a layerboot layer: the first a base, the "
                    "others overlays made on it, their OCI whiteouts (.wh.NAME, .wh..wh..opq) turned into "
                    "overlayfs ones; stacking them in order gives the flattened tree. Prints the digests, "
                    "base first. Nothing is fetched from a registry.")
    oci.add_argument("source", type=Path, metavar="IMAGE", help="an OCI archive file or an OCI layout directory")
    oci.add_argument("--ref", metavar="NAME", help="which image of the archive or layout (its reference name, "
                                                   "e.g. 'latest'); needed when it holds several")
    oci.add_argument("--layers", action="store_true", help="one layerboot layer per image layer instead of one "
                                                           "flattened base")
    oci.add_argument("--profile", metavar="NAME", help="also create this profile from the imported layer(s)")
    oci.add_argument("-d", "--description", default="", help="free text for the layer(s)")
    oci.add_argument("--threads", type=int, help="tar2sqfs jobs for --layers (default: bake.threads)")
    oci.set_defaults(func=cmd_import_oci)
    examples(oci, "skopeo copy docker://debian:12 oci-archive:debian12.tar && "
                  "layerboot base import-oci debian12.tar",
             "layerboot base import-oci ./rocky9-layout --ref 9.3 --layers --profile compute",
             "layerboot base import-oci node-image.tar -d 'warewulf node image'")
    examples(iso, "layerboot base import-iso debian-live-12.8.0-amd64-standard.iso",
             "layerboot base import-iso custom.iso --squashfs /images/root.sfs --kernel /boot/vmlinuz "
             "--initrd /boot/initrd")


def cmd_debootstrap(ctx: Context) -> int:
    from layerboot.build.debootstrap import DEFAULT_CACHE, NODE_PACKAGES, DebootstrapSpec, debootstrap_base, \
        host_arch, host_mirror
    a = ctx.args
    extra = tuple(p.strip() for item in a.include for p in item.split(",") if p.strip())
    spec = DebootstrapSpec(suite=a.suite, mirror=(a.mirror or host_mirror()).rstrip("/"),
                           include=NODE_PACKAGES + extra, arch=a.arch or host_arch())
    layer = debootstrap_base(ctx.ready_store(), spec, cache=a.cache_dir or DEFAULT_CACHE,
                             description=a.description)
    print(layer.digest)
    return 0


def cmd_import_oci(ctx: Context) -> int:
    from layerboot.build.oci.importer import import_oci
    a = ctx.args
    if a.profile:
        from layerboot.overlays.names import check_profile_name
        check_profile_name(a.profile)
        if ctx.profiles.numbers(a.profile):
            from layerboot.errors import LayerbootError
            raise LayerbootError(f"profile {a.profile!r} already exists")
    result = import_oci(ctx.ready_store(), a.source, ref=a.ref, per_layer=a.layers, description=a.description,
                        threads=ctx.config.bake_threads if a.threads is None else a.threads)
    for layer in result.layers:
        print(f"{layer.kind:<8} {layer.digest}  {human_size(layer.size):>10}")
    if a.profile:
        ctx.profiles.create(a.profile, result.layers[0].digest, cmdline=ctx.config.manifest_cmdline)
        for layer in result.layers[1:]:
            ctx.profiles.add(a.profile, layer.digest)
        print(f"profile {a.profile}: generation {ctx.profiles.current(a.profile).number}, "
              f"{len(result.layers)} layer(s)")
    return 0


def cmd_import_iso(ctx: Context) -> int:
    from layerboot.build.iso import import_iso
    a = ctx.args
    result = import_iso(ctx.ready_store(), a.iso, description=a.description, squashfs=a.squashfs,
                        kernel=a.kernel, initrd=a.initrd)
    rows = (("base", result.base, result.layout.squashfs + (" (ext4 image repacked)" if result.repacked else "")),
            ("kernel", result.kernel, result.layout.kernel), ("initrd", result.initrd, result.layout.initrd))
    for kind, layer, where in rows:
        print(f"{kind:<7} {layer.digest}  {human_size(layer.size):>10}  {where}")
    return 0
