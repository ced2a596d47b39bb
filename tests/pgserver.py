"""A real PostgreSQL for the tests: Debian's server binaries, a cluster in a temp dir, run as an unprivileged user.

initdb and pg_ctl refuse to run as root, so under root they run as ``nobody`` through ``setpriv``. The server
listens only on a Unix socket in its own directory (no TCP port to collide with other test runs on the
machine); durability is switched off because the cluster is thrown away at the end of the session.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from layerboot.run import run, tool_path

PG_BIN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "layerboot"
PASSWORD_USER = "withpassword"
PASSWORD = "right-password"


def server_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    found = [p.parent for p in PG_BIN_ROOT.glob("*/bin/initdb")]
    if found:
        return max(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    initdb = tool_path("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="layerboot-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.counter = 0
        self._uid = self._gid = None
        if os.geteuid() == 0:
            import pwd
            entry = pwd.getpwnam("nobody")
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self._uid is None:
            return argv
        return ["setpriv", f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups", "--", *argv]

    def start(self) -> "PostgresServer":
        run(self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                            "--encoding=UTF8", "--no-sync"]), cwd=self.root, timeout=120)
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\nshared_buffers = 32MB\n")
        # one role that must give its password, for the authentication-failure test; everyone else: trust
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"local all {PASSWORD_USER} scram-sha-256\nlocal all all trust\n", encoding="utf-8")
        run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                            "-t", "60", "start"]), cwd=self.root, timeout=90)
        self.admin(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                "stop"]), cwd=self.root, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, *, user: str = SUPERUSER, password: str | None = None) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@/{database}?host={self.root}"

    def admin(self, sql: str) -> None:
        import psycopg
        with psycopg.connect(dbname="postgres", user=SUPERUSER, host=str(self.root), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh, empty database (one per test keeps the tests apart); returns its URL."""
        self.counter += 1
        name = f"test{os.getpid()}_{self.counter}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("@/", 1)[1].split("?", 1)[0]
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
