"""``layerbootd``: the server daemon. One asyncio process: HTTP (aiohttp), SFTP (asyncssh), the bake queue.

Logging: one record per event, never a logger name in the text. Under systemd, when stderr is the journal
(``$JOURNAL_STREAM``), records go to journald natively with structured fields (``PRIORITY``, ``LOGGER``, and
for the access log ``REMOTE_ADDR``, ``REQUEST_METHOD``, ``REQUEST_PATH``, ``STATUS``, ``BYTES``,
``DURATION_MS``); otherwise they are lines on stderr with a timestamp and level. The access log (one record per
request) is on by default (``server.access_log``).

Service manager: with ``Type=notify`` the daemon says ``READY=1`` once it listens, pings the watchdog
(``WatchdogSec=``) from its event loop, and on SIGHUP reloads the config (``RELOADING=1`` .. ``READY=1``):
see :data:`RELOADABLE` for what takes effect at once; the other settings are logged as needing a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerboot import __version__, progress, systemd
from layerboot.atomic import create_exclusive
from layerboot.errors import LayerbootError
from layerboot.log import SafeFormatter, run_main
from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.settings import SETTINGS, load_config
from layerboot.urls import parse_http_url

log = logging.getLogger("layerboot.server")

PRIORITIES = systemd.PRIORITIES
# settings a SIGHUP applies at once; every other setting needs a restart (listening sockets, the store, workers)
RELOADABLE = ("store.compression", "store.block_size", "manifest.cmdline", "bake.max_bytes", "bake.max_files",
              "bake.special_files", "bake.threads", "server.unknown_mac", "server.default_profile",
              "server.queue_size", "server.debug", "server.access_log", "server.public_url",
              "server.boot_token_ttl", "server.upload_policy")


class JournalFormatter(SafeFormatter):
    """``<priority>message`` when stderr goes to journald without the native socket; ``time level: message``
    on a terminal or in a file. A SafeFormatter: text from nodes and clients cannot add lines or terminal
    escapes to the log."""

    def __init__(self, journal: bool) -> None:
        super().__init__("%(message)s" if journal else "%(asctime)s %(levelname)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prefix = f"<{PRIORITIES.get(record.levelno, 6)}>"
            return "\n".join(prefix + line for line in text.splitlines())
        return text


def setup_daemon_logging(*, debug: bool, access_log: bool = True) -> None:
    stream = logging.StreamHandler(sys.stderr)
    journal = systemd.stderr_is_journal()
    stream.setFormatter(JournalFormatter(journal))
    handler: logging.Handler = systemd.JournalHandler("layerbootd", fallback=stream) if journal else stream
    root = logging.getLogger("layerboot")
    for old in root.handlers:
        if old is not handler:
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    # aiohttp's and asyncssh's own records (bad requests, SSH clients) carry peer text too: same handler.
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger("layerboot.server.access").setLevel(logging.INFO if access_log else logging.WARNING)
    for noisy in ("aiohttp.access", "asyncssh"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    progress.set_mode("log")


def admin_token(paths: Paths) -> str:
    """The admin bearer token in state/admin.token (mode 0600), created on first start."""
    path = paths.admin_token
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    # exclusive: replicas starting together on a fresh store must end up with one token, not one each
    create_exclusive(path, (secrets.token_hex(24) + "\n").encode(), mode=0o600)
    return path.read_text(encoding="utf-8").strip()


def check_replicas(config: Any) -> None:
    """server.replicas needs a database every replica reaches: PostgreSQL, not the store's SQLite file."""
    if config.server_replicas and not config.server_database.startswith(("postgresql:", "postgres:",
                                                                         "postgresql+psycopg:")):
        raise LayerbootError("server.replicas = true needs a PostgreSQL server.database (postgresql://...): the "
                             "replicas coordinate their bakes and the monitor through it",
                             hint="set server.database, or server.replicas = false for one layerbootd per store")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port (0-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from layerboot.tools.parser import Parser, examples

    parser = Parser(
        prog="layerbootd",
        description="Serve a layerboot store to netbooting nodes: per-MAC iPXE scripts, signed manifests, "
                    "layers, kernels and initrds over HTTP; accept node uploads over HTTP and SFTP and bake "
                    "them into layers. Settings come from the TOML config (server.*, store.*, bake.*). SIGHUP "
                    "reloads the config; under systemd (Type=notify) it reports readiness and pings the "
                    "watchdog.")
    parser.add_argument("--version", action="version", version=f"layerbootd {__version__}",
                        help="print the version and exit")
    parser.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="TOML config (default: $LAYERBOOT_CONFIG or /etc/layerboot/layerboot.toml)")
    parser.add_argument("-s", "--store", type=Path, metavar="DIR", help="store directory (overrides store.root)")
    parser.add_argument("--listen", metavar="ADDR", help="HTTP address (overrides server.listen)")
    parser.add_argument("--port", type=_port, help="HTTP port (overrides server.port)")
    parser.add_argument("--ssh-port", type=_port, help="SFTP port, 0 disables (overrides server.ssh_port)")
    parser.add_argument("--debug", action="store_true", help="debug messages; tracebacks on errors")
    examples(parser, "layerbootd --config /etc/layerboot/layerboot.toml",
             "layerbootd --store /srv/layerboot --listen 10.0.0.1 --port 8080 --ssh-port 2222",
             "systemctl reload layerbootd        # SIGHUP: re-read the config")
    return parser


def load(args: argparse.Namespace) -> Any:
    return load_config(args.config, overrides={
        "store_root": args.store, "server_listen": args.listen, "server_port": args.port,
        "server_ssh_port": args.ssh_port, "server_debug": True if args.debug else None})


async def serve(config: Any, reload_config: Any = None) -> None:
    """Run until SIGTERM/SIGINT: open the store and database, start the bake queue, HTTP and SFTP.

    ``reload_config`` loads the config again for SIGHUP (default: keep ``config``)."""
    reload_config = reload_config or (lambda: config)
    from aiohttp import web

    from layerboot.server.auth.boottoken import open_boot_tokens
    from layerboot.server.auth.nodesecret import NodeSecrets, secret_hash
    from layerboot.server.auth.ratelimit import RateLimiter
    from layerboot.server.daemonlock import DaemonLock
    from layerboot.server.db import open_database
    from layerboot.server.guard.connections import ConnectionGuard, ProtocolLog, listen
    from layerboot.server.guard.limits import Limits, Slots
    from layerboot.server.guard.sender import Sender
    from layerboot.server.http import ServerState, build_app
    from layerboot.server.monitor.engine import Monitor
    from layerboot.server.monitor.metrics import Metrics
    from layerboot.server.nodes import Registry
    from layerboot.server.objects import ProfileIndex
    from layerboot.server.queue import Uploads
    from layerboot.server.replica.member import Replica, scrub_turn
    from layerboot.server.verify import ObjectVerifier, keep_verified

    if config.server_public_url:
        parse_http_url(config.server_public_url, what="server.public_url")
        from layerboot.overlays.cmdline import check_ipxe_word
        check_ipxe_word(config.server_public_url.rstrip("/"), "server.public_url")   # it goes into iPXE scripts
    paths = Paths(Path(config.store_root))
    store = Store(paths, compression=config.store_compression, block_size=config.store_block_size)
    store.require_initialized()
    if not paths.signing_key.exists():
        raise LayerbootError(f"the store at {paths.root} has no signing key", hint="run 'layerboot key generate'")
    check_replicas(config)
    for directory in (paths.incoming, paths.state, paths.tmp):
        directory.mkdir(parents=True, exist_ok=True)
    # held for the daemon's life (shared by replicas); the kernel drops it when we exit
    lock = DaemonLock(paths, shared=config.server_replicas).acquire()
    profiles = Profiles(store, mirrors=MirrorPolicy.from_config(config))
    db = open_database(config, paths)
    log.info("database %s (schema version %d)", db.display_url, db.scalar("SELECT max(version) FROM schema_version"))
    replica = Replica(db, enabled=config.server_replicas, lease=config.server_replica_lease,
                      url=config.server_public_url)
    limits, slots = Limits.from_config(config), Slots()
    per_minute = config.server_boot_scripts_per_minute
    state = ServerState(config=config, paths=paths, store=store, profiles=profiles, registry=Registry(db),
                        index=ProfileIndex(profiles), admin_token_hash=secret_hash(admin_token(paths)),
                        tokens=open_boot_tokens(paths.boot_token_key, config.server_boot_token_ttl),
                        secrets=NodeSecrets(db), boot_limiter=RateLimiter(per_minute, burst=per_minute),
                        started=time.monotonic(), limits=limits, slots=slots,
                        guard=ConnectionGuard(slots, limits.connections_per_client),
                        sender=Sender(send_timeout=limits.send_timeout), replica=replica)
    from layerboot.server.api.jobs import Jobs
    from layerboot.server.auth.admins import Admins, LoginLimits
    state.admins = Admins(db, LoginLimits.from_config(config))
    state.jobs = Jobs(db, store, config)
    if state.jobs.recover():
        log.warning("marked base imports of an earlier layerbootd that stopped as failed")
    tls = tls_context(config)
    from layerboot.server.fleet.manifest import NodeManifests
    from layerboot.server.fleet.queries import Fleet
    state.fleet = Fleet(db)
    state.node_manifests = NodeManifests(state.fleet, profiles, config)
    discovery_rate = config.fleet_discovery_requests_per_minute
    state.discovery_limiter = RateLimiter(discovery_rate, burst=discovery_rate)
    state.metrics = Metrics(state)
    if config.monitor_enabled:     # checks the monitor's config (channels) before anything starts
        state.monitor = Monitor(state)
    state.uploads = Uploads(state)
    state.verifier = ObjectVerifier(store.objects, enabled=config.server_verify_objects)
    replica.renewers.append(state.uploads.records)
    await replica.start()
    await state.uploads.start()

    app = build_app(state, client_max_size=1 << 20)
    # keepalive_timeout doubles as the header timeout: aiohttp arms it when a connection opens and after each
    # response, and closes a connection whose next request head is not complete by then (server/guard).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                           keepalive_timeout=limits.header_timeout,
                           logger=ProtocolLog(logging.getLogger("layerboot.server.http"), {}))
    await runner.setup()
    try:
        site = await listen(runner, config.server_listen, config.server_port, state.guard)
    except OSError as err:
        await runner.cleanup()
        raise LayerbootError(f"cannot listen on {config.server_listen}:{config.server_port}: {err.strerror}",
                             hint="is another layerbootd running? change server.port") from None
    tls_site = None
    if tls is not None:
        try:
            tls_site = await listen(runner, config.server_listen, config.server_tls_port, state.guard, ssl=tls)
        except OSError as err:
            site.close()
            await runner.cleanup()
            raise LayerbootError(f"cannot listen on {config.server_listen}:{config.server_tls_port} for HTTPS: "
                                 f"{err.strerror}", hint="change server.tls_port") from None
    if state.monitor is not None:
        await state.monitor.start()
    sftp = None
    if config.server_ssh_port:
        from layerboot.server.sftp import start_sftp
        sftp = await start_sftp(state, config.server_listen, config.server_ssh_port)
    where = f"http://{config.server_listen}:{config.server_port}" + \
        (f", https port {config.server_tls_port}" if tls_site else "") + \
        (f" and sftp port {config.server_ssh_port}" if sftp else "")
    log.info("layerbootd %s serving %s on %s", __version__, paths.root, where)
    systemd.notify("READY=1", f"STATUS=serving {paths.root} on {where}")
    verifying = asyncio.create_task(keep_verified(state.verifier, profiles,
                                                  scrub_interval=config.server_scrub_interval,
                                                  turn=scrub_turn(replica, config.server_scrub_interval)))
    from layerboot.server.services.manage import keep_refreshed
    refreshing = asyncio.create_task(keep_refreshed(config, paths, state.registry))   # DNS/syslog node lists

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(state, reload_config))
    pinger = asyncio.create_task(ping_watchdog(systemd.watchdog_interval()))
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        systemd.notify("STOPPING=1")
        pinger.cancel()
        verifying.cancel()
        refreshing.cancel()
        if sftp is not None:
            sftp.close()
        site.close()
        if tls_site is not None:
            tls_site.close()
        await runner.cleanup()
        state.jobs.stop()
        if state.monitor is not None:
            await state.monitor.stop()
        state.sender.stop()
        await state.uploads.stop()
        await replica.stop()
        state.verifier.close()
        db.close()
        lock.release()


async def ping_watchdog(interval: float | None) -> None:
    """``WATCHDOG=1`` from the event loop itself: a loop that hangs stops pinging and systemd restarts us."""
    if interval is None:
        return
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def reload(state: Any, load_again: Any) -> list[str]:
    """SIGHUP: read the config again and apply what can change while running; returns the keys applied.

    A config that does not load (bad TOML, unknown key) is logged and the running config stays."""
    systemd.notify(*systemd.reloading_states())
    try:
        new = load_again()
    except LayerbootError as err:
        log.error("reload failed, keeping the running configuration: %s", err.message)
        systemd.notify("READY=1", "STATUS=reload failed; running with the previous configuration")
        return []
    old = state.config
    changed = [s for s in SETTINGS if getattr(old, s.field) != getattr(new, s.field)]
    restart = [s.key for s in changed if s.key not in RELOADABLE]
    applied = [s.key for s in changed if s.key in RELOADABLE]
    merged = dataclasses.replace(new, **{s.field: getattr(old, s.field) for s in SETTINGS if s.key not in RELOADABLE})
    state.config = merged
    state.store.compression, state.store.block_size = merged.store_compression, merged.store_block_size
    state.tokens.ttl = merged.server_boot_token_ttl
    if state.uploads is not None:
        state.uploads.reconfigure(merged)
    setup_daemon_logging(debug=merged.server_debug, access_log=merged.server_access_log)
    if restart:
        log.warning("reloaded; these settings change only at the next restart: %s", ", ".join(restart))
    log.info("reloaded the configuration: %s", ", ".join(applied) or "nothing changed")
    systemd.notify("READY=1", "STATUS=reloaded: " + (", ".join(applied) or "nothing changed"))
    return applied


def tls_context(config: Any) -> Any:
    """The server's TLS context from server.tls_cert and server.tls_key (None when no certificate is set)."""
    import ssl

    if not config.server_tls_cert and not config.server_tls_key:
        return None
    if not (config.server_tls_cert and config.server_tls_key):
        raise LayerbootError("server.tls_cert and server.tls_key go together: set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.server_tls_cert, config.server_tls_key)
    except FileNotFoundError as err:
        raise LayerbootError(f"cannot read {err.filename}: no such file",
                             hint="server.tls_cert and server.tls_key name PEM files") from None
    except PermissionError as err:
        raise LayerbootError(f"cannot read {err.filename}: permission denied", hint="run layerbootd as root") from None
    except ssl.SSLError as err:
        raise LayerbootError(f"server.tls_cert / server.tls_key: {err.reason or err}",
                             hint="a PEM certificate (chain) and its matching unencrypted private key") from None
    return context


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_daemon_logging(debug=args.debug)

    def body() -> int:
        config = load(args)
        setup_daemon_logging(debug=config.server_debug, access_log=config.server_access_log)
        asyncio.run(serve(config, lambda: load(args)))
        # Everything is closed; do not wait at interpreter exit for worker threads still inside a bake or a
        # transfer to a stalled client: the bake is redone on the next start (it never publishes half a layer).
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)

    return run_main(body, debug=args.debug, prog="layerbootd")


if __name__ == "__main__":
    sys.exit(main())
