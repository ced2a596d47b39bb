"""Stateless boot tokens and per-node write secrets: asset keys, token revocation, node_secrets (server/auth/)."""

from __future__ import annotations

import time
from typing import Any

SQL = """
ALTER TABLE nodes ADD COLUMN asset_key TEXT;
ALTER TABLE nodes ADD COLUMN tokens_not_before INTEGER NOT NULL DEFAULT 0;
CREATE TABLE node_secrets (
    hash TEXT PRIMARY KEY,
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    origin TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
);
CREATE INDEX node_secrets_mac ON node_secrets(mac, origin, created);
"""


def upgrade(tx: Any) -> None:
    """Registration tokens become the nodes' first node secrets (same hash, so they keep working for uploads;
    origin 'migrated'); stored boot tokens are dropped (boot tokens are HMAC tokens now, never stored)."""
    now = time.time()
    for row in tx.all("SELECT mac, token_hash FROM nodes WHERE token_hash IS NOT NULL"):
        tx.execute("INSERT INTO node_secrets (hash, mac, origin, created) VALUES (?, ?, 'migrated', ?) "
                   "ON CONFLICT DO NOTHING", (row["token_hash"], row["mac"], now))
    tx.execute("DROP INDEX IF EXISTS nodes_token")
    tx.execute("ALTER TABLE nodes DROP COLUMN token_hash")
    tx.execute("DROP TABLE boot_tokens")
