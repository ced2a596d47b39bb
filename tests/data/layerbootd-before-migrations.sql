-- A node database as layerbootd wrote it before numbered migrations (server/db.py of commit 1509fcc),
-- made by that code (Registry.register, issue_boot_token, record_event, UploadRecords) and dumped with
-- sqlite3's iterdump(). tests/test_db.py loads it to check that migration 1 adopts such a store.
BEGIN TRANSACTION;
CREATE TABLE boot_tokens (
    hash TEXT PRIMARY KEY,
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    created REAL NOT NULL
);
INSERT INTO "boot_tokens" VALUES('76119031cddd3fb2d8853a9a4ad5cfaf44f6e5c2dd57731e7d4a3e8dade6937d','52:54:00:12:34:56',1.79605092451285433766e+09);
CREATE TABLE events (
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
INSERT INTO "events" VALUES(1,'52:54:00:12:34:56','2026-11-30T15:02:04+00:00','switch-root',1,2,5,4.25,'','{"fetch": 1.5}');
INSERT INTO "events" VALUES(2,'52:54:00:12:34:56','2026-11-30T15:02:04+00:00','layers',0,2,NULL,NULL,'sha256 mismatch','{}');
CREATE TABLE nodes (
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
INSERT INTO "nodes" VALUES('52:54:00:12:34:56','p1','235210a7bb4de4b3659cfc1c7d97d92a1ed7cbc6fe83cbd575f5c5d48eee0eb2',0,'2026-11-30T15:02:04+00:00','2026-11-30T15:02:04+00:00','layers',0,2,5,'sha256 mismatch',1,1);
INSERT INTO "nodes" VALUES('52:54:00:ab:cd:ef','p2',NULL,1,'2026-11-30T15:02:04+00:00',NULL,NULL,NULL,NULL,NULL,NULL,0,0);
CREATE TABLE profile_policy (
    profile TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
INSERT INTO "profile_policy" VALUES('p1','auto');
CREATE TABLE ssh_keys (
    mac TEXT NOT NULL REFERENCES nodes(mac) ON DELETE CASCADE,
    key TEXT NOT NULL,
    PRIMARY KEY (mac, key)
);
INSERT INTO "ssh_keys" VALUES('52:54:00:12:34:56','ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheLegacyFixture node1');
CREATE TABLE uploads (
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
INSERT INTO "uploads" VALUES('20261130150204-d6736a20','52:54:00:12:34:56','p1','change.tar.zst','/var/lib/layerboot/incoming/.queue/20261130150204-d6736a20.tar.zst',3000000000,'http','received','2026-11-30T15:02:04+00:00','2026-11-30T15:02:04+00:00',NULL,NULL,'');
INSERT INTO "uploads" VALUES('20261130150204-29f2dd0c','52:54:00:12:34:56','p1','held.tar.zst','/var/lib/layerboot/incoming/.queue/20261130150204-29f2dd0c.tar.zst',10,'sftp','baked','2026-11-30T15:02:04+00:00','2026-11-30T15:02:04+00:00','abababababababababababababababababababababababababababababababab',NULL,'held for approval');
CREATE UNIQUE INDEX nodes_token ON nodes(token_hash);
CREATE INDEX events_mac ON events(mac, id);
CREATE INDEX uploads_state ON uploads(state, received);
COMMIT;
