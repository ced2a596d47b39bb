"""``layerbootd``: the server daemon. One asyncio process: HTTP (aiohttp), SFTP (asyncssh), the bake queue.

Logs go to stderr, one line per record; under systemd (``$JOURNAL_STREAM`` set) each line starts with a
``<N>`` syslog priority so journald files it at the right level, and carries no timestamp of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerboot import __version__
from layerboot.atomic import write_text
from layerboot.errors import LayerbootError
from layerboot.log import SafeFormatter, run_main
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.settings import load_config
from layerboot.urls import parse_http_url

log = logging.getLogger("layerboot.server")

PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(SafeFormatter):
    """``<priority>name: message`` for journald; ``time level name: message`` on a terminal.

    A SafeFormatter: text from nodes and clients cannot add lines or terminal escapes to the log."""

    def __init__(self, journal: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if not journal else "%(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prefix = f"<{PRIORITIES.get(record.levelno, 6)}>"
            return "\n".join(prefix + line for line in text.splitlines())
        return text


def setup_daemon_logging(*, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger("layerboot")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    # aiohttp's and asyncssh's own records (bad requests, SSH clients) carry peer text too: same handler.
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger("layerboot.server.access").setLevel(logging.INFO if debug else logging.WARNING)
    for noisy in ("aiohttp.access", "asyncssh"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def admin_token(paths: Paths) -> str:
    """The admin bearer token in state/admin.token (mode 0600), created on first start."""
    path = paths.admin_token
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_hex(24)
    write_text(path, token + "\n", mode=0o600)
    return token


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port (0-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerbootd",
        description="Serve a layerboot store to netbooting nodes: per-MAC iPXE scripts, signed manifests, "
                    "layers, kernels and initrds over HTTP; accept node uploads over HTTP and SFTP and bake "
                    "them into layers. Settings come from the TOML config (server.*, store.*, bake.*).")
    parser.add_argument("--version", action="version", version=f"layerbootd {__version__}")
    parser.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="TOML config (default: $LAYERBOOT_CONFIG or /etc/layerboot/layerboot.toml)")
    parser.add_argument("-s", "--store", type=Path, metavar="DIR", help="store directory (overrides store.root)")
    parser.add_argument("--listen", metavar="ADDR", help="HTTP address (overrides server.listen)")
    parser.add_argument("--port", type=_port, help="HTTP port (overrides server.port)")
    parser.add_argument("--ssh-port", type=_port, help="SFTP port, 0 disables (overrides server.ssh_port)")
    parser.add_argument("--debug", action="store_true", help="log every request; tracebacks on errors")
    return parser


def load(args: argparse.Namespace) -> Any:
    return load_config(args.config, overrides={
        "store_root": args.store, "server_listen": args.listen, "server_port": args.port,
        "server_ssh_port": args.ssh_port, "server_debug": True if args.debug else None})


async def serve(config: Any) -> None:
    """Run until SIGTERM/SIGINT: open the store and database, start the bake queue, HTTP and SFTP."""
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
    for directory in (paths.incoming, paths.state, paths.tmp):
        directory.mkdir(parents=True, exist_ok=True)
    lock = DaemonLock(paths).acquire()   # held for the daemon's life; the kernel drops it when we exit
    profiles = Profiles(store)
    db = open_database(config, paths)
    log.info("database %s (schema version %d)", db.display_url, db.scalar("SELECT max(version) FROM schema_version"))
    limits, slots = Limits.from_config(config), Slots()
    per_minute = config.server_boot_scripts_per_minute
    state = ServerState(config=config, paths=paths, store=store, profiles=profiles, registry=Registry(db),
                        index=ProfileIndex(profiles), admin_token_hash=secret_hash(admin_token(paths)),
                        tokens=open_boot_tokens(paths.boot_token_key, config.server_boot_token_ttl),
                        secrets=NodeSecrets(db), boot_limiter=RateLimiter(per_minute, burst=per_minute),
                        started=time.monotonic(), limits=limits, slots=slots,
                        guard=ConnectionGuard(slots, limits.connections_per_client),
                        sender=Sender(send_timeout=limits.send_timeout))
    state.metrics = Metrics(state)
    if config.monitor_enabled:     # checks the monitor's config (channels) before anything starts
        state.monitor = Monitor(state)
    state.uploads = Uploads(state)
    state.verifier = ObjectVerifier(store.objects, enabled=config.server_verify_objects)
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
    if state.monitor is not None:
        await state.monitor.start()
    sftp = None
    if config.server_ssh_port:
        from layerboot.server.sftp import start_sftp
        sftp = await start_sftp(state, config.server_listen, config.server_ssh_port)
    log.info("layerbootd %s serving %s on http://%s:%d%s", __version__, paths.root, config.server_listen,
             config.server_port, f" and sftp port {config.server_ssh_port}" if sftp else "")
    verifying = asyncio.create_task(keep_verified(state.verifier, profiles,
                                                  scrub_interval=config.server_scrub_interval))
    from layerboot.server.services.manage import keep_refreshed
    refreshing = asyncio.create_task(keep_refreshed(config, paths, state.registry))   # DNS/syslog node lists

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        verifying.cancel()
        refreshing.cancel()
        if sftp is not None:
            sftp.close()
        site.close()
        await runner.cleanup()
        if state.monitor is not None:
            await state.monitor.stop()
        state.sender.stop()
        await state.uploads.stop()
        state.verifier.close()
        db.close()
        lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_daemon_logging(debug=args.debug)

    def body() -> int:
        config = load(args)
        setup_daemon_logging(debug=config.server_debug)
        asyncio.run(serve(config))
        # Everything is closed; do not wait at interpreter exit for worker threads still inside a bake or a
        # transfer to a stalled client: the bake is redone on the next start (it never publishes half a layer).
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)

    return run_main(body, debug=args.debug, prog="layerbootd")


if __name__ == "__main__":
    sys.exit(main())
