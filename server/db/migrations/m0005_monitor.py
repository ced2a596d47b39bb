"""Fleet monitor: heartbeats, incidents with their history, flap-damping conditions, per-node generation pins.

Times of the monitor's own tables are REAL seconds since the epoch (compared with "now" on every check);
``nodes.good_generation`` is the generation a node last ran well (a heartbeat reported it), and
``nodes.pinned_generation`` makes ``/nodes/MAC/manifest`` serve that generation (see server/monitor/pins.py).
"""

SQL = """
ALTER TABLE nodes ADD COLUMN good_generation INTEGER;
ALTER TABLE nodes ADD COLUMN pinned_generation INTEGER;
ALTER TABLE nodes ADD COLUMN pin_reason TEXT NOT NULL DEFAULT '';
CREATE TABLE pinned_manifests (
    mac TEXT PRIMARY KEY REFERENCES nodes(mac) ON DELETE CASCADE,
    profile TEXT NOT NULL,
    generation INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE heartbeats (
    mac TEXT PRIMARY KEY REFERENCES nodes(mac) ON DELETE CASCADE,
    received REAL NOT NULL,
    uptime REAL,
    load1 REAL,
    load5 REAL,
    load15 REAL,
    mem_total INTEGER,
    mem_available INTEGER,
    profile TEXT,
    generation INTEGER,
    serial INTEGER,
    failed_units TEXT NOT NULL DEFAULT '[]',
    disks TEXT NOT NULL DEFAULT '[]',
    ab TEXT NOT NULL DEFAULT '{}',
    agent TEXT NOT NULL DEFAULT ''
);
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    mac TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    opened REAL NOT NULL,
    updated REAL NOT NULL,
    closed REAL,
    closed_by TEXT NOT NULL DEFAULT '',
    clear_since REAL,
    step INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    flagged INTEGER NOT NULL DEFAULT 0,
    reopened INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX incidents_one_open ON incidents(mac, type) WHERE state <> 'closed';
CREATE INDEX incidents_state ON incidents(state, next_at);
CREATE INDEX incidents_mac ON incidents(mac, type, id);
CREATE TABLE incident_log (
    id INTEGER PRIMARY KEY,
    incident INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX incident_log_incident ON incident_log(incident, id);
CREATE INDEX incident_log_kind ON incident_log(kind, action, result);
CREATE TABLE conditions (
    mac TEXT NOT NULL,
    type TEXT NOT NULL,
    since REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (mac, type)
);
"""
