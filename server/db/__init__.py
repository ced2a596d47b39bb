"""The daemon's database: SQLite in the store by default, or PostgreSQL (``server.database``).

* :mod:`.database` — the data-access layer (one SQL text for both backends, transactions, locks);
* :mod:`.migrate` and :mod:`.migrations` — numbered schema migrations;
* :mod:`.errors` — driver errors as one-line LayerbootErrors.

Each table's queries live in the module that owns the table (server/nodes.py, server/uploads.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerboot.paths import Paths
from layerboot.server.db.database import Database, Transaction
from layerboot.server.db.errors import (DatabaseAuthError, DatabaseBusy, DatabaseConflict, DatabaseError,
                                        DatabaseFull, DatabaseUnreachable, SchemaError)

__all__ = ["Database", "Transaction", "DatabaseError", "DatabaseUnreachable", "DatabaseAuthError", "DatabaseFull",
           "DatabaseBusy", "DatabaseConflict", "SchemaError", "connect", "database_target", "open_database"]


def database_target(config: Any, paths: Paths) -> str | Path:
    """``server.database``, or the store's own SQLite file when it is empty."""
    return config.server_database or paths.database


def connect(target: str | Path, *, auto_migrate: bool = True) -> Database:
    """Open a database (an SQLite file path or a URL) with its schema current; see :func:`open_database`."""
    from layerboot.server.db.migrate import ensure_current

    db = Database(target)
    try:
        ensure_current(db, auto_migrate=auto_migrate)
    except BaseException:
        db.close()
        raise
    return db


def open_database(config: Any, paths: Paths) -> Database:
    """The database the config names, migrated when ``server.auto_migrate`` allows (else refused if behind)."""
    return connect(database_target(config, paths), auto_migrate=config.server_auto_migrate)
