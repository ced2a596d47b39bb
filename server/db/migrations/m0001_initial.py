"""The schema as it was before numbered migrations (nodes, boot tokens, SSH keys, events, uploads, policies).

Every statement is ``IF NOT EXISTS``, so on a store made by an older layerbootd this changes nothing but
adds what that database may lack (events.timings, added when boot reports started to carry timings);
on an empty database it creates everything.
"""

from __future__ import annotations

from typing import Any

SQL = """
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
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS uploads_state ON uploads(state, received);
CREATE TABLE IF NOT EXISTS profile_policy (
    profile TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
"""


def upgrade(tx: Any) -> None:
    from layerboot.server.db.migrate import columns
    if "timings" not in columns(tx, "events"):   # databases made before boot reports carried timings
        tx.execute("ALTER TABLE events ADD COLUMN timings TEXT NOT NULL DEFAULT '{}'")
