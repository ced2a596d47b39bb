"""stage1's PID 1: mount, modules, network, signed manifest, verified layers, overlayfs, switch_root.

The stages run in order (see cmdline.STAGES); ``layerboot.break=<stage>`` opens a shell before one. Any failure
prints one line (console + /dev/kmsg), writes /run/layerboot/status, reports to the server when it can, and then
runs ``layerboot.emergency=``. PID 1 never returns or raises out of :func:`main`.
"""

from __future__ import annotations

import os
import time

from . import console
from .console import StageError, debug, say

PUBLIC_KEY = "/etc/layerboot/signing.pub"
SERVER_MANIFEST = "the server's manifest"   # fetch_manifest's source when the server answered
SLOT_NET_TIMEOUT = 3.0   # layerboot.slot= with layerboot.server=: how long boot events may delay the boot


class Boot:
    """The state one boot accumulates; reported to the server as boot events."""

    def __init__(self) -> None:
        self.options = None
        self.stage = "start"
        self.timings: dict[str, float] = {}
        self.node = ""
        self.network_up = False
        self.manifest = None
        self.started = time.monotonic()
        self.mark = self.started
        self.uptime_at_start = time.clock_gettime(time.CLOCK_BOOTTIME)

    def event(self, ok: bool, message: str = "") -> dict:
        """The server's event record (stage, ok, generation, serial, elapsed, message) plus stage timings."""
        document = {"stage": self.stage, "ok": ok, "message": message,
                    "elapsed": round(time.clock_gettime(time.CLOCK_BOOTTIME), 3),
                    "timings": self.timings, "stage1_started": round(self.uptime_at_start, 3)}
        if self.manifest is not None:
            document.update(profile=self.manifest.profile, generation=self.manifest.generation,
                            serial=self.manifest.serial)
        return document

    def report(self, ok: bool, message: str = "") -> None:
        """POST a boot event; best effort (a server that cannot take it must not stop the boot)."""
        options = self.options
        if options is None or not self.network_up or not options.server or not self.node:
            return
        from .http import post_json

        try:
            post_json(f"{options.server}/nodes/{self.node}/events", self.event(ok, message), token=options.token)
        except Exception as err:  # noqa: BLE001 - best effort, never fatal
            debug(f"boot event not delivered: {err}")


def _emergency_from_raw_cmdline() -> str:
    """The emergency action even when the rest of the command line does not parse (or /proc was not mounted)."""
    if not os.path.exists("/proc/cmdline"):
        console.spawn([console.BUSYBOX, "mount", "-t", "proc", "proc", "/proc"], quiet=True)
    from .cmdline import raw_emergency

    try:
        with open("/proc/cmdline", encoding="utf-8", errors="replace") as f:
            return raw_emergency(f.read())
    except OSError:
        return "shell"


def run_stages(boot: Boot) -> None:
    from .cmdline import CmdlineError, read_options
    from .system import (CACHE_MODULES, LAYER_DIR, LOWER_DIR, NEWROOT, check_init, load_modules,
                         mount_api_filesystems, ram_for_layers, stack, switch_root)

    boot.stage = "mounts"
    mount_api_filesystems()
    boot.stage = "cmdline"
    try:
        options = read_options()
    except CmdlineError as err:
        raise StageError(f"kernel command line: {err}") from None
    boot.options = options
    console.set_debug(options.debug)
    debug(f"stage1 started {boot.uptime_at_start:.2f}s after the kernel")
    if not options.server and not options.slot:
        raise StageError("no layerboot.server= (the iPXE script sets it) or layerboot.slot= (GRUB sets it) on the "
                         "kernel command line")

    def stage(name: str) -> None:
        now = time.monotonic()
        if boot.stage != "cmdline":
            boot.timings[boot.stage] = round(now - boot.mark, 3)
        boot.stage, boot.mark = name, now
        if name in options.breaks:
            console.shell(f"layerboot.break={name}")

    boot.mark = time.monotonic()
    stage("modules")
    optional = CACHE_MODULES if options.cache or options.slot or options.discover else ()  # disks
    if options.fetch == "stream":   # nbd and dm-verity with the layer stack, in one modprobe (stream.py)
        from .stream import MODULES as STREAM_MODULES
        from .stream import load_modules as load_stream_modules

        load_modules(STREAM_MODULES, optional=optional)
        load_stream_modules()
    else:
        load_modules(optional=optional)

    stage("net")
    written: list[str] = []
    try:
        if not options.server and not options.net.neednet:   # layerboot.slot= alone: the disk holds everything
            raise StageError("not used (no layerboot.server=)")
        written = bring_up_network(options, boot)
    except StageError as err:
        if options.net.neednet or (not options.cache and not options.slot):
            raise
        say(f"network: {err}; {'booting the slot' if options.slot else 'trying the cache'}")
        boot.node = options.node

    stage("manifest")
    if options.discover:    # an unknown machine: report it and wait to be accepted (discover.py); never returns
        discovery(options, boot)
    secret = ""
    if boot.network_up and not options.slot:   # the write credential, before anything else; best effort
        from .claim import claim_secret

        secret = claim_secret(options.server, boot.node, options.token, timeout=min(options.timeout, 5.0), say=say)
    from .verify import VerifyError, load_public_key, verify_envelope

    cache = None
    cache_errors: tuple[type[BaseException], ...] = ()
    if options.cache:   # initrd/stage1/cache.py: only imported when asked for
        from .cache import CacheError, open_cache

        cache_errors = (CacheError,)
        cache = open_cache(options.cache, say=say)
    slot, online = None, False
    if options.slot:   # the chain of an A/B disk slot instead of the server (stage1/slot.py, docs/install.md)
        from .slot import SlotError, open_boot_slot

        try:
            slot = open_boot_slot(options.slot, PUBLIC_KEY, cache, say=say, profile=options.profile,
                                  node=boot.node)
        except (SlotError, *cache_errors) as err:
            raise StageError(str(err)) from None
        boot.manifest = manifest = slot.manifest
    else:
        envelope, source = fetch_manifest(options, boot.node, cache, online=boot.network_up)
        online = source == SERVER_MANIFEST
        try:
            min_serial = cache.last_serial() if cache is not None else 0
            public = load_public_key(PUBLIC_KEY)
            boot.manifest = manifest = verify_envelope(envelope, public, min_serial=min_serial,
                                                       profile=options.profile, node=boot.node, source=source)
            if cache is not None:
                cache.accept(manifest.serial, envelope)
        except (VerifyError, *cache_errors) as err:
            raise StageError(str(err)) from None
    say(f"manifest: profile {manifest.profile} generation {manifest.generation} serial {manifest.serial}, "
        f"{len(manifest.layers)} layers")

    stage("layers")
    if cache is not None:   # first make room: keep the current and the previous generation's layers
        try:
            cache.gc(cache.generation_digests() | {layer.digest for layer in manifest.layers})
        except (OSError, *cache_errors) as err:
            say(f"cache garbage collection failed ({err}); continuing")
    if slot is not None:   # each layer through dm-verity, or checked whole before it is loop-mounted (slot.py)
        try:
            files = list(slot.layer_paths())
        except SlotError as err:
            raise StageError(str(err)) from None
    else:
        from .fetch import base_urls, fetch_layers

        streamed: dict[str, str] = {}
        if options.fetch == "stream":   # block devices with dm-verity, nothing downloaded (stream.py)
            from .stream import attach

            streamed = attach(manifest.layers, bases=base_urls(options.server), token=secret or options.token,
                              cache=cache, giveup=options.stream_giveup, timeout=options.timeout)
            whole = len(manifest.layers) - len(streamed)
            say(f"streaming {len(streamed)} layers" + (f"; {whole} without a dm-verity tree are fetched whole"
                                                       if whole else ""))
        rest = tuple(layer for layer in manifest.layers if layer.digest not in streamed)
        on_disk = cache is not None and options.layers != "ram"   # layerboot.layers=, docs/stage1.md
        if not on_disk and rest:
            cached = cache.digests() if cache is not None else set()
            wanted = [layer for layer in rest if layer.digest not in cached]

            def ram(layer) -> int:  # noqa: ANN001 - verify.Layer; with verify=blocks its tree is kept next to it
                tree = layer.verity.tree_size if options.verify == "blocks" and layer.verity is not None else 0
                return layer.size + tree

            ram_for_layers(sum(ram(layer) for layer in wanted), len(rest), room=sum(ram(layer) for layer in rest))
        try:   # with the node secret when there is one: a named node's own layer is served with it only
            fetched = iter(fetch_layers(options.server, secret or options.token, rest, LAYER_DIR,
                                        retries=options.retries, timeout=options.timeout, cache=cache,
                                        on_disk=on_disk, sources=layer_sources(options, manifest, cache),
                                        verify=options.verify, online=online)
                           if rest else ())
        except StageError as err:
            if manifest.node and not secret and "403" in str(err):
                raise StageError(f"{err}: node {manifest.node}'s own layer is served with its node secret only, "
                                 "and this boot has none (see the claim line above): set the node's asset key on "
                                 "the server (layerboot nodes set NAME --asset-key UUID:SERIAL)") from None
            raise
        files = [streamed.get(layer.digest) or next(fetched) for layer in manifest.layers]

    stage("mount")
    stack(files, options.upper_size)
    check_init(options.init)
    if written:   # /etc/resolv.conf and /etc/hostname of the new root (netstate.py: who wins)
        from .netstate import link_into_root

        try:
            for path in link_into_root(NEWROOT, [f"{LOWER_DIR}/{i}" for i in range(len(files))], written):
                debug(f"{path} -> /run/layerboot/{os.path.basename(path)}")
        except OSError as err:   # the node still boots; /run/layerboot has the files
            say(f"cannot point /etc/resolv.conf or /etc/hostname at /run/layerboot: {err.strerror or err}")

    stage("switch_root")
    boot.report(True)
    console.write_status(_status(boot, True))
    say(f"switching to the new root ({time.clock_gettime(time.CLOCK_BOOTTIME):.2f}s since boot), "
        f"exec {options.init}")
    console.remotelog.close()
    switch_root(options.init)
    raise StageError(f"switch_root to {options.init} failed")


def discovery(options, boot: Boot) -> None:  # noqa: ANN001
    """The discovery boot: report, wait, then reboot (accepted) or power off (rejected). Never returns."""
    from .discover import discover

    if not boot.network_up:
        raise StageError("the discovery boot needs the network")
    mac, boot.node = boot.node, ""     # no boot events: this machine is no node (yet)
    result = discover(options.server, mac, clone=options.clone, name=options.name, timeout=options.timeout)
    console.write_status(_status(boot, True, f"discovery: {result}"))
    say("rebooting into this machine's own boot" if result == "accepted" else "powering off")
    console.emergency("reboot" if result == "accepted" else "poweroff")


def layer_sources(options, manifest, cache):  # noqa: ANN001, ANN201 - Options, BootManifest, LayerCache
    """The signed manifest's mirrors, ranked (stage1/sources.py), when it names some, the boot uses them
    (``layerboot.mirrors=on``, the default) and some layer is not in the cache; else None (the origin only)."""
    if not getattr(manifest, "mirrors", ()) or options.mirrors == "off":
        return None
    if cache is not None and {layer.digest for layer in manifest.layers} <= cache.digests():
        return None     # all cached (each is still checked before use): nothing to rank mirrors for
    from .sources import Sources

    sources = Sources.for_manifest(options.server, manifest, say=say)
    sources.rank()
    say(sources.describe())
    return sources


def bring_up_network(options, boot: Boot, *, run_dir: str = "/run/layerboot", etc: str = "/etc") -> list[str]:  # noqa: ANN001
    """The net stage proper: interfaces up (net.py), then the host name and /run/layerboot/net.json & co.
    Returns the files written to ``run_dir`` (netstate.link_into_root points the new root at some)."""
    from .net import bring_up
    from .netstate import set_hostname, summary, write_run_files

    # With a slot the network only carries boot events: a short wait, never fatal (unless rd.neednet=1).
    timeout = options.timeout
    if options.slot and not options.net.neednet:
        timeout = min(timeout, SLOT_NET_TIMEOUT)
    result = bring_up(options.net, interface=options.interface, node=options.node, timeout=timeout)
    boot.node = options.node or result.node_mac
    boot.network_up = True
    record = summary(options.net, result, options.server)
    try:
        set_hostname(record["hostname"])
        written = write_run_files(record, run_dir, etc)
    except OSError as err:
        raise StageError(f"recording the boot network in {run_dir}: {err.strerror or err}") from None
    say(f"boot interface {result.boot_interface} ({result.reason})"
        + (f", host name {record['hostname']}" if record["hostname"] else "")
        + (f", DNS {' '.join(record['dns'])}" if record["dns"] else ""))
    from .remotelog import start

    note = start(options.syslog, record["log_servers"], hostname=record["hostname"])   # this line's and earlier
    if note:
        say(note)
    return written


def fetch_manifest(options, node: str, cache, *, online: bool = True) -> tuple[bytes, str]:  # noqa: ANN001
    """The signed envelope from the server, or the cache's last verified one if the server cannot be reached;
    and where it came from, for errors. The caller verifies it, and its profile and node, either way."""
    from .http import HttpError, get_bytes

    cached = "the cached manifest"
    if not online:
        last = cache.last_manifest() if cache is not None else None
        if last is None:
            raise StageError("no network and no manifest in the cache")
        say("no network; booting the cached manifest")
        return last, cached

    url = f"{options.server}/nodes/{node}/manifest"
    try:
        return get_bytes(url, token=options.token, timeout=options.timeout, limit=1 << 20), SERVER_MANIFEST
    except HttpError as err:
        if err.status or cache is None:
            raise
        last = cache.last_manifest()
        if last is None:
            raise
        say(f"server unreachable ({err}); booting the cached manifest")
        return last, cached


def _status(boot: Boot, ok: bool, message: str = "") -> str:
    from .jsonlite import dumps

    return dumps(boot.event(ok, message), sort_keys=True) + "\n"


def main() -> None:
    """Entry point of /init. Never returns: it execs the real init or ends in the emergency action."""
    boot = Boot()
    try:
        run_stages(boot)
        message = "stage1 returned without switching root"
    except StageError as err:
        message = f"{boot.stage}: {err}"
    except KeyboardInterrupt:
        message = f"{boot.stage}: interrupted"
    except BaseException as err:  # noqa: BLE001 - PID 1 must survive anything
        message = f"{boot.stage}: internal error {type(err).__name__}: {err}"
        if boot.options is not None and boot.options.debug:
            import traceback

            traceback.print_exc()
    try:
        console.error(message)
        console.write_status(_status(boot, False, message))
        boot.report(False, message)
        action = boot.options.emergency if boot.options is not None else _emergency_from_raw_cmdline()
    except BaseException:  # noqa: BLE001
        action = _emergency_from_raw_cmdline()
    console.emergency(action)
