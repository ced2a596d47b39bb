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
from layerboot.log import run_main
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.settings import load_config

log = logging.getLogger("layerboot.server")

PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>name: message`` for journald; ``time level name: message`` on a terminal."""

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
    logging.getLogger("layerboot.server.access").setLevel(logging.INFO if debug else logging.WARNING)
    for noisy in ("aiohttp.access", "asyncssh"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def admin_token(paths: Paths) -> str:
    """The admin bearer token in state/admin.token (mode 0600), created on first start."""
    path = paths.state / "admin.token"
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_hex(24)
    write_text(path, token + "\n", mode=0o600)
    return token


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
    parser.add_argument("--port", type=int, help="HTTP port (overrides server.port)")
    parser.add_argument("--ssh-port", type=int, help="SFTP port, 0 disables (overrides server.ssh_port)")
    parser.add_argument("--debug", action="store_true", help="log every request; tracebacks on errors")
    return parser


def load(args: argparse.Namespace) -> Any:
    return load_config(args.config, overrides={
        "store_root": args.store, "server_listen": args.listen, "server_port": args.port,
        "server_ssh_port": args.ssh_port, "server_debug": True if args.debug else None})


async def serve(config: Any) -> None:
    """Run until SIGTERM/SIGINT: open the store and database, start the bake queue, HTTP and SFTP."""
    from aiohttp import web

    from layerboot.server.db import open_database
    from layerboot.server.http import ServerState, build_app
    from layerboot.server.monitor.engine import Monitor
    from layerboot.server.monitor.metrics import Metrics
    from layerboot.server.nodes import Registry, token_hash
    from layerboot.server.objects import ProfileIndex
    from layerboot.server.queue import Uploads

    if config.server_public_url and not config.server_public_url.startswith(("http://", "https://")):
        raise LayerbootError(f"server.public_url = {config.server_public_url!r} must be an http:// URL")
    paths = Paths(Path(config.store_root))
    store = Store(paths, compression=config.store_compression, block_size=config.store_block_size)
    store.require_initialized()
    if not paths.signing_key.exists():
        raise LayerbootError(f"the store at {paths.root} has no signing key", hint="run 'layerboot key generate'")
    for directory in (paths.incoming, paths.state, paths.tmp):
        directory.mkdir(parents=True, exist_ok=True)
    profiles = Profiles(store)
    db = open_database(config, paths)
    log.info("database %s (schema version %d)", db.display_url, db.scalar("SELECT max(version) FROM schema_version"))
    registry = Registry(db, boot_token_ttl=config.server_boot_token_ttl)
    state = ServerState(config=config, paths=paths, store=store, profiles=profiles, registry=registry,
                        index=ProfileIndex(profiles), admin_token_hash=token_hash(admin_token(paths)),
                        started=time.monotonic())
    state.metrics = Metrics(state)
    if config.monitor_enabled:     # checks the monitor's config (channels) before anything starts
        state.monitor = Monitor(state)
    state.uploads = Uploads(state)
    await state.uploads.start()

    app = build_app(state, client_max_size=1 << 20)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.server_listen, config.server_port, reuse_address=True, backlog=1024)
    try:
        await site.start()
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

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if sftp is not None:
            sftp.close()
        await runner.cleanup()
        if state.monitor is not None:
            await state.monitor.stop()
        await state.uploads.stop()
        db.close()


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
