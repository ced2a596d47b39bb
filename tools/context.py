"""What every command needs, built once from the global options: config, paths, store, profiles."""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.settings import load_config


@dataclass
class Context:
    args: argparse.Namespace
    _db: Any = field(default=None, init=False, repr=False)     # the daemon's database, once opened

    @cached_property
    def config(self) -> Any:
        store = getattr(self.args, "store", None)
        return load_config(getattr(self.args, "config", None),
                           overrides={"store_root": Path(store) if store else None})

    @cached_property
    def paths(self) -> Paths:
        return Paths(Path(self.config.store_root))

    @cached_property
    def store(self) -> Store:
        store = Store(self.paths, compression=self.config.store_compression, block_size=self.config.store_block_size)
        return store

    def ready_store(self) -> Store:
        self.store.require_initialized()
        return self.store

    @cached_property
    def profiles(self) -> Profiles:
        return Profiles(self.ready_store(), mirrors=MirrorPolicy.from_config(self.config))

    # -- the daemon's database ----------------------------------------------------------------------------
    def database(self):  # noqa: ANN202 - layerboot.server.db.Database
        """The daemon's database (server.database; the store's SQLite file created if missing and left owned by
        the store's owner), opened once per command."""
        if self._db is not None:
            return self._db
        from layerboot.server.db import open_database
        self.ready_store()
        db = open_database(self.config, self.paths)
        if db.dialect == "sqlite":
            path = self.paths.database
            self.paths.adopt(path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        self._db = db
        return db

    def server_state(self) -> Any:
        """What the records of server/api/fleet.py need from the daemon's ServerState (the CLI's --json gives
        the same records as /api/v1): registry, fleet, profiles, config, paths."""
        from types import SimpleNamespace

        from layerboot.server.fleet.queries import Fleet
        from layerboot.server.nodes import Registry
        db = self.database()
        return SimpleNamespace(registry=Registry(db), fleet=Fleet(db), profiles=self.profiles, config=self.config,
                               paths=self.paths)

    def _database(self):  # noqa: ANN202 - layerboot.server.db.Database | None
        """The database if layerbootd or a nodes command ever made one (None otherwise)."""
        if self.config.server_database or self.paths.database.exists():
            return self.database()
        return None

    def held_layers(self) -> set[str]:
        """Layers of baked uploads waiting for 'uploads approve' (they must not be deleted)."""
        conn = self._database()
        if conn is None:
            return set()
        from layerboot.server.uploads import UploadRecords
        return {u.layer for u in UploadRecords(conn, self.paths).list() if u.held and u.layer}

    def nodes_booting(self, profile: str) -> list[str]:
        """MACs of the registered nodes that boot ``profile``."""
        conn = self._database()
        if conn is None:
            return []
        from layerboot.server.nodes import Registry
        return [node.mac for node in Registry(conn).all() if node.profile == profile]

    def booted_serials(self, days: float) -> set[int]:
        """Manifest serials some node reported booting within ``days`` days (boot reports, last boot)."""
        conn = self._database()
        if conn is None:
            return set()
        from layerboot.server.nodes import EVENTS_KEPT, Registry
        cutoff = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).replace(microsecond=0).isoformat()
        registry = Registry(conn)
        serials: set[int] = set()
        for node in registry.all():
            if node.last_serial is not None and (node.last_seen or "") >= cutoff:
                serials.add(node.last_serial)
            serials |= {e.serial for e in registry.events(node.mac, limit=EVENTS_KEPT)
                        if e.serial is not None and e.time >= cutoff}
        return serials
