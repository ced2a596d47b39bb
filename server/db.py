"""The daemon's sqlite database (Paths.database): one schema, opened the same way by layerbootd and the CLI.

WAL mode and a busy timeout let ``layerboot nodes ...`` change the registry while layerbootd runs. The daemon
touches the database only from its event-loop thread (bakes report back to it), so one connection suffices.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from layerboot.diskspace import note_database, storage_error
from layerboot.errors import LayerbootError

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    mac TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    token_hash TEXT,
    auto INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    last_seen TEXT,
    last_stage TEXT,
    last_ok INTEGER,
    last_generation INTEGER,
    last_serial INTEGER,
    last_message TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    boots INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_token ON nodes(token_hash);
CREATE TABLE IF NOT EXISTS boot_tokens (
    hash TEXT PRIMARY KEY,
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    created REAL NOT NULL
);
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
    message TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL,
    last_error TEXT NOT NULL DEFAULT '',
    keep_until REAL
);
CREATE INDEX IF NOT EXISTS uploads_state ON uploads(state, received);
CREATE TABLE IF NOT EXISTS profile_policy (
    profile TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
"""


UPLOAD_RETRY_COLUMNS = {
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "next_try": "REAL",
    "last_error": "TEXT NOT NULL DEFAULT ''",
    "keep_until": "REAL",
}


def _add_columns(conn: sqlite3.Connection, table: str, wanted: dict[str, str]) -> None:
    columns = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, declaration in wanted.items():
        if name not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def connect(path: Path) -> sqlite3.Connection:
    """Open (and create) the database with the schema applied; autocommit, WAL, foreign keys on."""
    note_database(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=15, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(SCHEMA)
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(events)")}
        if "timings" not in columns:   # databases made before boot reports carried timings
            conn.execute("ALTER TABLE events ADD COLUMN timings TEXT NOT NULL DEFAULT '{}'")
        _add_columns(conn, "uploads", UPLOAD_RETRY_COLUMNS)   # databases made before bake retries
    except sqlite3.Error as err:
        raise storage_error(err, path, doing="opening") or LayerbootError(
            f"cannot open the node database {path}: {err}",
            hint="is the store directory writable (run as root)?") from None
    except OSError as err:
        raise LayerbootError(f"cannot create {path.parent}: {err.strerror}") from None
    return conn
