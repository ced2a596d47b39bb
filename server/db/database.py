"""One data-access layer over SQLite and PostgreSQL: SQLAlchemy Core runs the same SQL text on both.

Queries are plain SQL strings, written once. Parameters are either ``?`` with a tuple (as sqlite3 takes them)
or ``:name`` with a dict; ``?`` is turned into numbered bind parameters, so the same text runs on both drivers.
Each call of :meth:`Database.execute` / ``one`` / ``all`` / ``scalar`` is one statement on its own (SQLite:
autocommit; PostgreSQL: a transaction of one statement) on a connection borrowed from the engine's pool. :meth:`Database.transaction` groups statements and takes the lock
each backend needs for a read-modify-write:

* SQLite: ``BEGIN IMMEDIATE`` (the database's one write lock, taken at the start so two writers never
  deadlock on the upgrade from read to write), WAL journal (readers never wait for the writer), a 15 s busy
  timeout (a second process waits for the lock instead of failing), foreign keys on;
* PostgreSQL: a READ COMMITTED transaction; statements that must not race lock their rows, e.g.
  ``SELECT ... FOR UPDATE SKIP LOCKED`` (:meth:`Transaction.for_update` adds that clause on PostgreSQL only).

Threads and processes: a Database is thread-safe (the pool hands each thread its own connection), so share
one per process; every process (layerbootd replicas, CLI commands) opens its own. The daemon calls it from the
event loop (each call is short); work that may wait on a lock belongs in a thread
(``await loop.run_in_executor(pool, records.claim)``).

Why SQLAlchemy Core rather than a thin DB-API wrapper of our own: it already has what such a wrapper would
grow into for two drivers — one bind syntax over sqlite3's qmark and psycopg's format style, a thread-safe
connection pool with pre-ping (a PostgreSQL restart costs one reconnect, not a dead daemon), one exception
hierarchy that flags lost connections, URL parsing that hides passwords, and the schema inspector the
migrations use; issue 17's replicas can use its ``with_for_update(skip_locked=True)`` and Core expressions.
We use it for plain SQL text only (no ORM), so the queries stay readable and close to what sqlite3 ran. The
price, measured by bench/bench_db.py: 0.1-0.3 ms of CPU per statement over raw sqlite3, and 0.3-0.8 s (VM under
load 9-14) to import it in a CLI command that opens the database (imported lazily, never on a node).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError
from layerboot.server.db.errors import translate

BUSY_TIMEOUT = 15            # seconds an SQLite writer waits for another process's write lock
CONNECT_TIMEOUT = 10         # seconds to reach a PostgreSQL server
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
Params = Sequence[Any] | Mapping[str, Any]

_LITERAL_OR_QMARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


@lru_cache(maxsize=512)
def _statement(sql: str, positional: bool) -> Any:
    """The SQLAlchemy text() for a query; ``?`` outside quotes becomes ``:_p0``, ``:_p1``, ..."""
    from sqlalchemy import text

    if positional:
        counter = iter(range(10_000))
        sql = _LITERAL_OR_QMARK.sub(lambda m: f":_p{next(counter)}" if m.group() == "?" else m.group(), sql)
    return text(sql)


def _bind(sql: str, params: Params | None) -> tuple[Any, dict[str, Any]]:
    if params is None:
        return _statement(sql, False), {}
    if isinstance(params, Mapping):
        return _statement(sql, False), dict(params)
    return _statement(sql, True), {f"_p{i}": value for i, value in enumerate(params)}


def make_url(target: str | Path) -> Any:
    """A SQLAlchemy URL from ``server.database`` (or a path to an SQLite file); one clear error if unusable."""
    from sqlalchemy.engine import make_url as sa_make_url
    from sqlalchemy.engine import URL
    from sqlalchemy.exc import ArgumentError

    if isinstance(target, Path):
        return URL.create("sqlite", database=str(target))
    try:
        url = sa_make_url(target)
    except ArgumentError:
        raise LayerbootError(f"server.database = {target!r} is not a database URL",
                             hint="use postgresql://USER@HOST/DBNAME, sqlite:////ABSOLUTE/PATH, or leave it "
                                  "empty for the store's own SQLite file") from None
    if url.drivername in POSTGRES_SCHEMES:
        import importlib.util
        if importlib.util.find_spec("psycopg") is None:
            raise LayerbootError("server.database names a PostgreSQL server but the psycopg package is missing",
                                 hint="pip install 'layerboot[postgresql]' (or apt-get install python3-psycopg)")
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:" or not Path(url.database).is_absolute():
            raise LayerbootError(f"server.database = {target!r}: an SQLite database needs an absolute file path",
                                 hint="sqlite:////var/lib/layerboot/state/layerbootd.sqlite (four slashes)")
        return url.set(drivername="sqlite")
    raise LayerbootError(f"server.database = {url.render_as_string(hide_password=True)!r}: "
                         f"unsupported database {url.drivername!r}", hint="use postgresql:// or sqlite://")


class Queries:
    """The four ways to run SQL; shared by Database (one transaction per call) and Transaction."""

    dialect: str

    def _result(self, sql: str, params: Params | None, take: Any) -> Any:
        raise NotImplementedError

    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run a statement; returns the number of rows it changed."""
        return self._result(sql, params, lambda r: r.rowcount)

    def one(self, sql: str, params: Params | None = None) -> Mapping[str, Any] | None:
        """The first row as a mapping (``row["mac"]``), or None."""
        return self._result(sql, params, lambda r: r.mappings().first())

    def all(self, sql: str, params: Params | None = None) -> list[Mapping[str, Any]]:
        return self._result(sql, params, lambda r: r.mappings().all())

    def scalar(self, sql: str, params: Params | None = None) -> Any:
        """The first column of the first row (``SELECT count(*) ...``), or None."""
        return self._result(sql, params, lambda r: r.scalar())

    def for_update(self, *, skip_locked: bool = False) -> str:
        """`` FOR UPDATE [SKIP LOCKED]`` on PostgreSQL; nothing on SQLite, whose BEGIN IMMEDIATE locks it all."""
        if self.dialect != "postgresql":
            return ""
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


class Transaction(Queries):
    """Statements on one connection inside one transaction (see :meth:`Database.transaction`)."""

    def __init__(self, db: "Database", conn: Any) -> None:
        self.db = db
        self.conn = conn
        self.dialect = db.dialect

    def _result(self, sql: str, params: Params | None, take: Any) -> Any:
        statement, values = _bind(sql, params)
        with self.db.translating():
            return take(self.conn.execute(statement, values))


class Database(Queries):
    """The daemon's database: an SQLAlchemy engine plus the SQLite/PostgreSQL specifics."""

    def __init__(self, target: str | Path) -> None:
        from sqlalchemy import create_engine, event

        self.url = make_url(target)
        self.dialect = "postgresql" if self.url.drivername.startswith("postgresql") else "sqlite"
        self.name = (f"the node database {self.url.database}" if self.dialect == "sqlite"
                     else f"the PostgreSQL database {self.display_url}")
        if self.dialect == "sqlite":
            self.engine = create_engine(self.url, connect_args={"timeout": BUSY_TIMEOUT})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, connect_args={
                "connect_timeout": CONNECT_TIMEOUT, "application_name": "layerboot"})

    def __repr__(self) -> str:
        return f"<Database {self.display_url}>"

    @property
    def display_url(self) -> str:
        """The URL as the user wrote it (postgresql://), without its password, for logs and messages."""
        shown = self.url.set(drivername="postgresql") if self.dialect == "postgresql" else self.url
        return shown.render_as_string(hide_password=True)

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Turn driver errors into one-line LayerbootErrors (bugs such as bad SQL pass through)."""
        from sqlalchemy.exc import DBAPIError

        try:
            yield
        except DBAPIError as err:
            found = translate(err, self.name, Path(self.url.database) if self.dialect == "sqlite" else None)
            if found is err:
                raise
            raise found from None

    def _result(self, sql: str, params: Params | None, take: Any) -> Any:
        statement, values = _bind(sql, params)
        with self.translating(), self.engine.begin() as conn:
            return take(conn.execute(statement, values))

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        """One transaction: commits at the end of the block, rolls back on an error.

        ``write``: it will write (SQLite takes the write lock at BEGIN); False for a consistent read only.
        """
        with self.translating(), self.engine.connect() as conn:
            conn.execution_options(layerboot_begin="BEGIN IMMEDIATE" if write else "BEGIN")
            with conn.begin():
                yield Transaction(self, conn)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A short job only one process may do at a time (replicas moving one SFTP file into the queue):
        yields True when this process got the lock named ``name``, False when another one holds it.

        PostgreSQL: a session advisory lock (``pg_try_advisory_lock``), released at the end of the block or when
        the process dies; SQLite: always True (one daemon per store; BEGIN IMMEDIATE serialises the rest).
        """
        if self.dialect != "postgresql":
            yield True
            return
        import hashlib

        key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)
        with self.translating(), self.engine.connect() as conn:
            got = bool(conn.exec_driver_sql("SELECT pg_try_advisory_lock(%(k)s)", {"k": key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.exec_driver_sql("SELECT pg_advisory_unlock(%(k)s)", {"k": key})

    def prepare_file(self) -> None:
        """Create the directory of an SQLite file (PostgreSQL databases are created by their admin)."""
        if self.dialect == "sqlite":
            directory = Path(self.url.database).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise LayerbootError(f"cannot create {directory}: {err.strerror}",
                                     hint="is the store directory writable (run as root)?") from None

    def exists(self) -> bool:
        """False only for an SQLite file that was never created (so `db status` does not create it)."""
        return self.dialect != "sqlite" or Path(self.url.database).exists()

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event say when a transaction starts (pysqlite would start them by itself).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON",
                   f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}"):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # A single statement runs in SQLite's autocommit mode (it is atomic by itself); transaction() asks for
    # BEGIN IMMEDIATE or BEGIN. Sent to the driver directly: this is on every call's path (bench/bench_db.py).
    begin = conn.get_execution_options().get("layerboot_begin")
    if begin:
        conn.connection.driver_connection.execute(begin)
