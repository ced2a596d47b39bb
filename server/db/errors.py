"""Database failures a user can act on, as one-line LayerbootErrors; driver errors are translated here only.

Both drivers are inspected the way they report things: sqlite3 (Python 3.11+) names the SQLite result code in
``sqlite_errorname``; psycopg gives the SQLSTATE of errors the server raised, but a failed *connection* has no
SQLSTATE, only libpq's message, so those are told apart by the words libpq uses.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from layerboot.diskspace import describe
from layerboot.errors import LayerbootError


class DatabaseError(LayerbootError):
    """A database problem that is not the request's fault: layerbootd answers 503 (try again later)."""

    http_status = 503


class DatabaseUnreachable(DatabaseError):
    """The server cannot be reached, the database or its file does not exist, or the connection was lost."""


class DatabaseAuthError(DatabaseError):
    """The PostgreSQL server refused the user or password."""


class DatabaseFull(DatabaseError):
    """No space left for the database: 507 Insufficient Storage, like every full disk (layerboot.diskspace)."""

    http_status = 507


class DatabaseBusy(DatabaseError):
    """Locked by someone else for too long, or a serialization conflict: trying again can succeed."""


class DatabaseConflict(DatabaseError):
    """A write broke a uniqueness or reference rule, usually because a concurrent change got there first."""

    http_status = 409


class SchemaError(DatabaseError):
    """The schema does not match this layerboot: newer than the code, or migrations pending."""


CONNECT_AUTH_WORDS = ("password authentication failed", "no password supplied", "pg_hba.conf",
                      "authentication failed", "role \"")
CONNECT_DOWN_WORDS = ("connection refused", "no such file or directory", "could not translate host name",
                      "timeout expired", "server closed the connection", "is the server running",
                      "network is unreachable", "no route to host", "connection is bad")


def _pg(orig: Any, name: str) -> DatabaseError | None:
    state = getattr(orig, "sqlstate", None) or ""
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    text = text.removeprefix("connection failed: ")
    if state.startswith("28") or (not state and any(w in text.lower() for w in CONNECT_AUTH_WORDS)):
        return DatabaseAuthError(f"the PostgreSQL server refused {name}: {text}",
                                 hint="check the user in server.database and its password (~/.pgpass or "
                                      "PGPASSFILE), and pg_hba.conf on the server")
    if state == "42501":
        return DatabaseAuthError(f"the PostgreSQL user of {name} lacks a privilege: {text}",
                                 hint="let the user own the database (createdb -O USER ...) or GRANT it the rights")
    if state == "3D000" or (not state and "database \"" in text and "does not exist" in text):
        return DatabaseUnreachable(f"{name}: {text}",
                                   hint="create it: createdb -O USER -E UTF8 -T template0 NAME")
    if state == "53100":
        return DatabaseFull(f"the PostgreSQL server of {name} is out of disk space: {text}",
                            hint="free space on the server's data directory")
    if state in ("40001", "40P01", "55P03", "53300"):
        return DatabaseBusy(f"{name} is busy: {text}", hint="try again")
    if state.startswith("57P") or state.startswith("08") or (
            not state and any(w in text.lower() for w in CONNECT_DOWN_WORDS)):
        return DatabaseUnreachable(f"cannot reach {name}: {text}",
                                   hint="is the PostgreSQL server running, and server.database right?")
    if state.startswith("23"):
        return DatabaseConflict(f"{name} refused a conflicting change: {text}",
                                hint="another change to the same record came first; try again")
    return None


SQLITE_MESSAGES = {
    "SQLITE_FULL": (DatabaseFull, "the disk holding {name} is full", "free space in the store's filesystem"),
    "SQLITE_CANTOPEN": (DatabaseUnreachable, "cannot open {name}",
                        "is the store's state directory there and writable (run as root)?"),
    "SQLITE_READONLY": (DatabaseUnreachable, "{name} is read-only here", "run as root (the store's owner)"),
    "SQLITE_BUSY": (DatabaseBusy, "{name} stayed locked by another process for too long",
                    "another layerboot command or layerbootd holds a long write; try again"),
    "SQLITE_LOCKED": (DatabaseBusy, "{name} is locked", "try again"),
    "SQLITE_NOTADB": (DatabaseUnreachable, "{name} is not an SQLite database", "restore it from a backup"),
    "SQLITE_CORRUPT": (DatabaseUnreachable, "{name} is corrupt", "restore it from a backup"),
    "SQLITE_IOERR": (DatabaseUnreachable, "I/O error on {name}", "check the disk (dmesg)"),
    "SQLITE_CONSTRAINT": (DatabaseConflict, "{name} refused a conflicting change",
                          "another change to the same record came first; try again"),
}


def _sqlite(orig: Any, name: str, path: Path | None) -> DatabaseError | None:
    code = getattr(orig, "sqlite_errorname", "") or ""
    disk = errno.ENOSPC if code == "SQLITE_FULL" or "database or disk is full" in str(orig) else \
        errno.EIO if code.startswith("SQLITE_IOERR") else None
    if disk is not None and path is not None:   # name the filesystem as every other full or failing disk is named
        problem = describe(disk, path, doing="writing the node database")
        return (DatabaseFull if disk == errno.ENOSPC else DatabaseUnreachable)(problem.message, hint=problem.hint)
    for prefix, (kind, message, hint) in SQLITE_MESSAGES.items():
        # extended codes carry a suffix: SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED, SQLITE_CONSTRAINT_UNIQUE
        if code == prefix or code.startswith(prefix + "_"):
            return kind(message.format(name=name) + f" ({orig})", hint=hint)
    if "database or disk is full" in str(orig):
        return DatabaseFull(f"the disk holding {name} is full", hint="free space in the store's filesystem")
    return None


def translate(err: Exception, name: str, path: Path | None = None) -> Exception:
    """The LayerbootError for a SQLAlchemy/driver error, or ``err`` itself when it is a bug (bad SQL, ...).

    ``path``: the SQLite file, so a full or failing disk is named by device and mount point."""
    from sqlalchemy import exc

    if isinstance(err, exc.DBAPIError):
        orig = err.orig
        module = type(orig).__module__
        found = _sqlite(orig, name, path) if module.startswith("sqlite3") else _pg(orig, name)
        if found is not None:
            return found
        if err.connection_invalidated:
            return DatabaseUnreachable(f"lost the connection to {name}: {orig}",
                                       hint="is the database server running?")
    return err
