"""Admin console: admin accounts, browser sessions, API tokens, login failures, background jobs.

Sessions, login failures and jobs live in the database, not in a daemon's memory, so several layerbootd
replicas behind one address share them (a login on one replica is valid on all; a job started on one shows
on all). Times are REAL seconds since the epoch. Only hashes of session ids and API tokens are stored.
"""

SQL = """
CREATE TABLE admins (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL,
    password_changed REAL NOT NULL,
    last_login REAL
);
CREATE TABLE admin_sessions (
    hash TEXT PRIMARY KEY,
    admin TEXT NOT NULL REFERENCES admins(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires REAL NOT NULL,
    address TEXT NOT NULL DEFAULT ''
);
CREATE INDEX admin_sessions_admin ON admin_sessions(admin);
CREATE INDEX admin_sessions_expires ON admin_sessions(expires);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    admin TEXT NOT NULL REFERENCES admins(name) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    last_used REAL
);
CREATE TABLE login_failures (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    address TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX login_failures_account ON login_failures(account, time);
CREATE INDEX login_failures_address ON login_failures(address, time);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    started_by TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL
);
CREATE INDEX jobs_created ON jobs(created);
"""
