"""The daemon's sqlite database (Paths.database): one schema, opened the same way by layerbootd and the CLI.

WAL mode and a busy timeout let ``layerboot nodes ...`` change the registry while layerbootd runs. The daemon
touches the database only from its event-loop thread (bakes report back to it), so one connection suffices.

SCHEMA is the current shape, created with ``IF NOT EXISTS``: a new table or index goes there. What an older
database must change in place (columns, data, dropped tables) is a numbered migration in MIGRATIONS, applied in
order by :func:`connect` after SCHEMA and recorded in ``PRAGMA user_version`` (under a write lock, so a CLI and
the daemon opening an old database at once migrate it once). Migrations check before they change, because a
new database already has SCHEMA's shape.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from layerboot.errors import LayerbootError

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    mac TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    auto INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    last_seen TEXT,
    last_stage TEXT,
    last_ok INTEGER,
    last_generation INTEGER,
    last_serial INTEGER,
    last_message TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    boots INTEGER NOT NULL DEFAULT 0,
    asset_key TEXT,
    tokens_not_before INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS node_secrets (
    hash TEXT PRIMARY KEY,
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    origin TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
);
CREATE INDEX IF NOT EXISTS node_secrets_mac ON node_secrets(mac, origin, created);
CREATE TABLE IF NOT EXISTS ssh_keys (
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    key TEXT NOT NULL,
    PRIMARY KEY (mac, key)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    time TEXT NOT NULL,
    stage TEXT NOT NULL,
    ok INTEGER NOT NULL,
    generation INTEGER,
    serial INTEGER,
    elapsed REAL,
    message TEXT NOT NULL DEFAULT '',
    timings TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_mac ON events(mac, id);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    profile TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    via TEXT NOT NULL,
    state TEXT NOT NULL,
    received TEXT NOT NULL,
    updated TEXT NOT NULL,
    layer TEXT,
    generation INTEGER,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS uploads_state ON uploads(state, received);
CREATE TABLE IF NOT EXISTS profile_policy (
    profile TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
"""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}


def _events_timings(conn: sqlite3.Connection) -> None:
    """1: boot reports carry per-step timings (databases made before them lack the column)."""
    if "timings" not in _columns(conn, "events"):
        conn.execute("ALTER TABLE events ADD COLUMN timings TEXT NOT NULL DEFAULT '{}'")


def _credentials(conn: sqlite3.Connection) -> None:
    """2: stateless boot tokens and per-node secrets (server/auth/).

    Nodes get an asset key and a "tokens not before" time; registration tokens become the nodes' first node
    secrets (same hash, so they keep working for uploads; origin 'migrated'); stored boot tokens are dropped.
    """
    columns = _columns(conn, "nodes")
    if "asset_key" not in columns:
        conn.execute("ALTER TABLE nodes ADD COLUMN asset_key TEXT")
    if "tokens_not_before" not in columns:
        conn.execute("ALTER TABLE nodes ADD COLUMN tokens_not_before INTEGER NOT NULL DEFAULT 0")
    if "token_hash" in columns:
        conn.execute("INSERT OR IGNORE INTO node_secrets (hash, mac, origin, created) SELECT token_hash, mac, "
                     "'migrated', CAST(strftime('%s', 'now') AS REAL) FROM nodes WHERE token_hash IS NOT NULL")
        conn.execute("DROP INDEX IF EXISTS nodes_token")
        conn.execute("ALTER TABLE nodes DROP COLUMN token_hash")
    conn.execute("DROP TABLE IF EXISTS boot_tokens")


MIGRATIONS = ((1, _events_timings), (2, _credentials))


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the database lacks; returns its version afterwards."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= MIGRATIONS[-1][0]:
        return version
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]   # another process may have been first
        for number, step in MIGRATIONS:
            if number > version:
                step(conn)
                conn.execute(f"PRAGMA user_version = {number}")
                version = number
    return version


def connect(path: Path) -> sqlite3.Connection:
    """Open (and create) the database with the schema applied; autocommit, WAL, foreign keys on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=15, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(SCHEMA)
        migrate(conn)
    except sqlite3.Error as err:
        raise LayerbootError(f"cannot open the node database {path}: {err}",
                             hint="is the store directory writable (run as root)?") from None
    except OSError as err:
        raise LayerbootError(f"cannot create {path.parent}: {err.strerror}") from None
    return conn
