"""Replicas: per-claim owner and lease on uploads, named leases (the monitor's turn), the replicas that run.

``uploads.owner`` is the replica (``HOST:PID:RANDOM``) that is receiving or baking an upload and
``uploads.lease_until`` (epoch seconds) how long its claim lasts unless renewed: another replica takes an
upload over only once its lease has run out. ``leases`` holds named leases (``monitor``: which replica runs
the fleet monitor); ``replicas`` the replicas that are running, renewed with their leases (server/replica/).
"""

SQL = """
ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE uploads ADD COLUMN lease_until REAL;
CREATE INDEX uploads_state_owner ON uploads(state, owner);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL,
    acquired REAL NOT NULL
);
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    seen REAL NOT NULL,
    url TEXT NOT NULL DEFAULT ''
);
"""
