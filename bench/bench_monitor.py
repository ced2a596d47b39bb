#!/usr/bin/env python3
"""What one check of the fleet monitor and one /metrics scrape cost, against reading the same rows with sqlite3.

    python3 bench/bench_monitor.py [--nodes 2000] [--rounds 5] [--database URL]

A fleet of ``--nodes`` registered nodes, each with a heartbeat; 5 % of them failing their boot (so that many
incidents are open, which is the steady state the check runs in most of the time). Median of ``--rounds``:

* ``check``    — what the monitor does every ``monitor.interval``: read nodes and heartbeats, run the
  detectors, reconcile incidents (one write transaction), find due ladder steps;
* ``metrics``  — one ``GET /metrics`` body (node states, incidents, ladder steps, from the database);
* ``peer``     — plain sqlite3 reading the nodes and heartbeats tables into tuples (the floor any check has).

Prints seconds and the ratios check/peer and metrics/peer. The database is SQLite in a temporary store unless
``--database`` names another (e.g. a PostgreSQL URL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from layerboot.overlays.keys import generate_key  # noqa: E402
from layerboot.overlays.profile import Profiles  # noqa: E402
from layerboot.overlays.store import Store  # noqa: E402
from layerboot.paths import Paths  # noqa: E402
from layerboot.server.db import connect  # noqa: E402
from layerboot.server.monitor.engine import Monitor  # noqa: E402
from layerboot.server.monitor.metrics import Metrics  # noqa: E402
from layerboot.server.monitor.model import Heartbeat  # noqa: E402
from layerboot.server.monitor.records import MonitorRecords  # noqa: E402
from layerboot.server.nodes import Event, Registry  # noqa: E402
from layerboot.settings import load_config  # noqa: E402


def median_seconds(fn, rounds: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fleet(root: Path, nodes: int, database: str | None) -> SimpleNamespace:
    paths = Paths(root / "store")
    store = Store(paths)
    store.init()
    generate_key(paths.signing_key, paths.public_key)
    tree = root / "base"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("bench\n")
    profiles = Profiles(store)
    profiles.create("p1", store.import_tree(tree, kind="base", all_root=True).digest)
    db = connect(database or paths.database)
    registry, records = Registry(db), MonitorRecords(db)
    now = time.time()
    for i in range(nodes):
        mac = f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        node, _ = registry.register(mac, "p1", replace=True)
        records.record_heartbeat(node, Heartbeat.from_json({"profile": "p1", "generation": 1, "uptime": 100.0,
                                                            "load": [0.1, 0.1, 0.1]}, received=now))
        if i % 20 == 0:
            registry.record_event(mac, Event(stage="layers", ok=False, message="layers: layer x failed verification"))
    config = load_config(Path(os.devnull), overrides={"store_root": paths.root, "monitor_heartbeat_timeout": 10 ** 6})
    state = SimpleNamespace(config=config, paths=paths, profiles=profiles, registry=registry, uploads=None)
    state.metrics = Metrics(state)
    return SimpleNamespace(paths=paths, db=db, state=state, monitor=Monitor(state))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", metavar="URL", help="server.database to measure (default: SQLite)")
    args = parser.parse_args()
    logging.getLogger("layerboot").setLevel(logging.ERROR)    # one line per opened incident otherwise
    with tempfile.TemporaryDirectory(prefix="layerboot-bench-monitor-") as tmp:
        setup_started = time.perf_counter()
        f = fleet(Path(tmp), args.nodes, args.database)
        monitor = f.monitor
        monitor.notifier.send = _quiet_send           # no messages: their cost is the channels', not the check's
        monitor._step = _no_step                       # ladders are not what is measured here
        asyncio.run(monitor.check())                   # opens the incidents: later checks are the steady state
        setup = time.perf_counter() - setup_started
        check = median_seconds(lambda: asyncio.run(monitor.check()), args.rounds)
        metrics = median_seconds(lambda: asyncio.run(f.state.metrics.render()), args.rounds)
        peer = float("nan")
        if args.database is None:
            def read() -> None:
                with sqlite3.connect(f.paths.database) as conn:
                    conn.execute("SELECT * FROM nodes").fetchall()
                    conn.execute("SELECT * FROM heartbeats").fetchall()
            peer = median_seconds(read, args.rounds)
        open_now = sum(MonitorRecords(f.db).open_counts().values())
        f.db.close()
    print(f"fleet: {args.nodes} nodes, {open_now} open incidents (setup {setup:.1f} s); median of {args.rounds}")
    print(f"monitor check   {check * 1000:8.1f} ms" + (f"   {check / peer:5.1f}x the peer" if peer == peer else ""))
    print(f"/metrics body   {metrics * 1000:8.1f} ms" + (f"   {metrics / peer:5.1f}x the peer" if peer == peer else ""))
    if peer == peer:
        print(f"peer (sqlite3)  {peer * 1000:8.1f} ms   reading nodes + heartbeats")
    return 0


async def _quiet_send(channels, message):  # noqa: ANN001, ANN202
    return []


def _no_step(incident):  # noqa: ANN001, ANN202
    return asyncio.sleep(0)


if __name__ == "__main__":
    sys.exit(main())
