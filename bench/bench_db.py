#!/usr/bin/env python3
"""What the data-access layer costs on layerbootd's hot paths, against plain sqlite3 running the same SQL.

    python3 bench/bench_db.py [--calls 2000] [--postgresql auto|off|URL]

Per call, median of 5 rounds, on one registered node:

* ``node_of secret``  — every upload / upload-status request checks the node secret with it (boot tokens are
  HMAC tokens: checking them reads no database);
* ``boot script``     — ``GET /boot/MAC.ipxe``: find + saw_boot (the boot token is minted without the database);
* ``record_event``    — a boot report (write transaction: insert, update, trim);
* ``claim``           — the bake queue's claim of an upload (write transaction).

The peer is Python's sqlite3 module running the very same statements the way server/db.py did before the
data-access layer (one autocommit connection, ``BEGIN IMMEDIATE`` by hand), on its own database file in the
same directory. With ``--postgresql auto`` the layer is also measured on a throw-away PostgreSQL server
started like the tests' (Debian's postgresql package; skipped when it is not installed).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from layerboot.overlays.layer import utc_now  # noqa: E402
from layerboot.paths import Paths  # noqa: E402
from layerboot.server.db import connect  # noqa: E402
from layerboot.server.db.migrate import load_migrations  # noqa: E402
from layerboot.server.auth.nodesecret import NodeSecrets, secret_hash  # noqa: E402
from layerboot.server.nodes import Event, Registry  # noqa: E402
from layerboot.server.uploads import UploadRecords  # noqa: E402

MAC = "52:54:00:12:34:56"


def per_call(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median seconds per call over ``rounds`` rounds of ``calls`` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def layer_ops(url: str | Path, paths: Paths) -> dict[str, Callable[[], object]]:
    db = connect(url)
    registry = Registry(db)
    _, secret = registry.register(MAC, "p1", replace=True)
    secrets = NodeSecrets(db)
    records = UploadRecords(db, paths)

    def boot() -> None:
        registry.find(MAC)
        registry.saw_boot(MAC)

    def claim() -> None:
        upload = records.begin(MAC, "p1", "u.tar.zst", via="http")
        records.complete(upload, 1)
        records.claim()

    event = Event(stage="switch-root", ok=True, generation=2, elapsed=3.5)
    return {"node_of secret": lambda: secrets.node_of(secret), "boot script": boot,
            "record_event": lambda: registry.record_event(MAC, event), "claim": claim}


def sqlite3_ops(path: Path, paths: Paths) -> dict[str, Callable[[], object]]:
    """The same statements through sqlite3 directly, as the code did before the data-access layer."""
    conn = sqlite3.connect(path, timeout=15, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON"):
        conn.execute(pragma)
    for migration in load_migrations():
        conn.executescript(migration.sql)
    secret = "lbs1." + "ab" * 24
    conn.execute("INSERT INTO nodes (mac, profile, auto, created) VALUES (?, ?, 0, ?)", (MAC, "p1", utc_now()))
    conn.execute("INSERT INTO node_secrets (hash, mac, origin, created, last_used) VALUES (?, ?, 'register', ?, ?)",
                 (secret_hash(secret), MAC, time.time(), time.time()))
    queue = paths.incoming / ".queue"

    def node_of_secret() -> object:
        return conn.execute("SELECT mac, last_used FROM node_secrets WHERE hash = ?",
                            (secret_hash(secret),)).fetchone()

    def boot() -> None:
        conn.execute("SELECT * FROM nodes WHERE mac = ?", (MAC,)).fetchone()
        conn.execute("UPDATE nodes SET last_seen = ?, last_stage = 'ipxe', last_ok = 1, boots = boots + 1 "
                     "WHERE mac = ?", (utc_now(), MAC))

    def record_event() -> None:
        now = utc_now()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events (mac, time, stage, ok, generation, serial, elapsed, message, timings) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (MAC, now, "switch-root", 1, 2, None, 3.5, "", "{}"))
            conn.execute("UPDATE nodes SET last_seen = ?, last_stage = ?, last_ok = ?, last_message = ?, "
                         "last_generation = COALESCE(?, last_generation), last_serial = COALESCE(?, last_serial), "
                         "failures = failures + ? WHERE mac = ?", (now, "switch-root", 1, "", 2, None, 0, MAC))
            conn.execute("DELETE FROM events WHERE mac = ? AND id NOT IN "
                         "(SELECT id FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?)", (MAC, MAC, 200))

    counter = iter(range(10**9))

    def claim() -> None:
        upload_id, now = f"{next(counter):014d}-00000000", utc_now()
        conn.execute("INSERT INTO uploads (id, mac, profile, name, path, size, via, state, received, updated) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, 'receiving', ?, ?)",
                     (upload_id, MAC, "p1", "u.tar.zst", str(queue / upload_id), 0, "http", now, now))
        conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        conn.execute("UPDATE uploads SET state = ?, updated = ?, size = ? WHERE id = ?", ("received", now, 1, upload_id))
        conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT * FROM uploads WHERE state = 'received' ORDER BY received, id LIMIT 1").fetchone()
            conn.execute("UPDATE uploads SET state = 'baking', updated = ? WHERE id = ?", (utc_now(), row["id"]))
        conn.execute("SELECT * FROM uploads WHERE id = ?", (row["id"],)).fetchone()

    return {"node_of secret": node_of_secret, "boot script": boot, "record_event": record_event, "claim": claim}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (5 rounds, median)")
    parser.add_argument("--postgresql", default="auto", help="auto (start a throw-away server), off, or a URL")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    server = None
    with tempfile.TemporaryDirectory(prefix="layerboot-bench-db-") as tmp:
        paths = Paths(Path(tmp) / "store")
        paths.create()
        systems: dict[str, dict[str, Callable[[], object]]] = {
            "sqlite3 (peer)": sqlite3_ops(Path(tmp) / "peer.sqlite", paths),
            "layer on SQLite": layer_ops(paths.database, paths),
        }
        try:
            if args.postgresql != "off":
                url = args.postgresql
                if url == "auto":
                    from pgserver import PostgresServer, server_bindir
                    bindir = server_bindir()
                    if bindir is not None:
                        server = PostgresServer(bindir).start()
                        url = server.new_database()
                if url != "auto":
                    systems["layer on PostgreSQL"] = layer_ops(url, paths)
            figures = {name: {op: per_call(fn, args.calls) for op, fn in ops.items()} for name, ops in systems.items()}
        finally:
            if server is not None:
                server.stop()
    peer = figures["sqlite3 (peer)"]
    print(f"{'operation':16}" + "".join(f"{name:>24}" for name in figures))
    for op in peer:
        cells = []
        for name, ops in figures.items():
            ratio = "" if ops is peer else f" ({ops[op] / peer[op]:.1f}x)"
            cells.append(f"{ops[op] * 1e6:.0f} us{ratio}".rjust(24))
        print(f"{op:16}" + "".join(cells))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
