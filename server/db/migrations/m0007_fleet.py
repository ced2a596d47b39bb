"""Fleet identity: node names, clusters, groups and per-node config; per-node manifests; discovery and enrollment.

``nodes`` keeps its MAC key (the node's first NIC, what boot tokens and the other tables name) and gains a
unique ``name`` (its host name; NULL for nodes registered by MAC only), its ``cluster``, its ``config`` (JSON:
interfaces, groups and its own settings, server/fleet/records.py) and a stable ``machine_id``. ``node_macs``
maps every interface MAC to its node (the boot-time lookup), ``node_groups`` lists group membership in order,
``fleet_sets`` holds groups and clusters with their defaults. ``node_manifests`` keeps each node's newest
signed per-node manifest with the rendered file index it was made from (and its node layer, and the one
before, which nodes still booting may fetch). ``discoveries`` are unknown machines that reported in by the
discovery boot; ``enroll_rules`` accept some of them automatically.
"""

SQL = """
ALTER TABLE nodes ADD COLUMN name TEXT;
ALTER TABLE nodes ADD COLUMN cluster TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN machine_id TEXT;
CREATE UNIQUE INDEX nodes_name ON nodes(name);
CREATE INDEX nodes_cluster ON nodes(cluster);
CREATE TABLE node_macs (
    mac TEXT PRIMARY KEY,
    node TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE
);
CREATE INDEX node_macs_node ON node_macs(node);
CREATE TABLE node_groups (
    node TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE INDEX node_groups_name ON node_groups(name);
CREATE TABLE fleet_sets (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    defaults TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE node_manifests (
    mac TEXT PRIMARY KEY REFERENCES nodes(mac) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    files TEXT NOT NULL,
    layer TEXT NOT NULL,
    previous_layer TEXT,
    profile TEXT NOT NULL,
    generation INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    cmdline TEXT NOT NULL,
    envelope TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX node_manifests_layer ON node_manifests(layer);
CREATE INDEX node_manifests_previous ON node_manifests(previous_layer);
CREATE TABLE discoveries (
    mac TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    facts TEXT NOT NULL,
    remote TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    reports INTEGER NOT NULL DEFAULT 1,
    conflict TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL DEFAULT '{}',
    node TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX discoveries_state ON discoveries(state, last_seen);
CREATE TABLE enroll_rules (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    created TEXT NOT NULL
);
"""
