"""Admin accounts for the web console and the API: passwords, browser sessions, API tokens, login limits.

Everything is in the daemon's database (migration 6), none of it in a process's memory, so any number of
layerbootd replicas share logins, sessions and the login rate limit.

* **Passwords** are hashed with Argon2id (argon2-cffi, its default parameters: RFC 9106's second
  recommendation, 64 MiB and 3 passes); a hash made with older parameters is replaced at the next login.
  An unknown account costs the same hash as a known one, so timing does not tell which names exist.
* **Sessions**: a random 256-bit id in an HttpOnly cookie; the database keeps its sha256, the account, a CSRF
  token, and when it ends: ``console.session_idle`` seconds after its last use, at most
  ``console.session_max_age`` after the login. A password change or ``admin remove`` ends the account's
  sessions; logout ends one.
* **API tokens** (``layerboot admin token create``): ``lbt1.<id>.<secret>``, sent as ``Authorization: Bearer``;
  stored as a sha256, listed and revoked by id. They act as their admin account.
* **Login failures** are counted per account and per client address over ``console.login_window`` seconds;
  past ``console.login_failures_per_account`` (or ``..._per_address``) logins are refused with 429 and a
  Retry-After until the oldest failure leaves the window, even with the right password.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.safetext import printable

NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")      # fullmatch: a Unix user name
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
TOKEN_PREFIX = "lbt1."
TOKEN_RE = re.compile(r"lbt1\.([0-9a-f]{8})\.([0-9a-f]{48})")
TOUCH_EVERY = 60.0            # seconds between writes of a session's last use (not one write per request)
TOKEN_TOUCH_EVERY = 3600.0


class LoginRefused(LayerbootError):
    """A refused login: ``status`` 401 (wrong name or password) or 429 (too many failures, ``retry_after``)."""

    def __init__(self, message: str, *, status: int = 401, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _hasher() -> Any:
    from argon2 import PasswordHasher
    return PasswordHasher()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise LayerbootError(f"{printable(str(name)[:40])!r} is not an admin account name",
                             hint="use up to 32 lowercase letters, digits, '_', '.', '-', starting with a letter")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise LayerbootError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise LayerbootError(f"a password has at most {MAX_PASSWORD} characters")
    if not password.isprintable():
        raise LayerbootError("a password is printable text (no control characters or line breaks)")
    return password


@dataclass(frozen=True)
class Admin:
    name: str
    created: float
    password_changed: float
    last_login: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from layerboot.server.monitor.model import iso
        return {"name": self.name, "created": iso(self.created), "password_changed": iso(self.password_changed),
                "last_login": iso(self.last_login)}


@dataclass(frozen=True)
class Session:
    admin: str
    csrf: str
    created: float
    last_seen: float
    expires: float
    hash: str


@dataclass(frozen=True)
class ApiToken:
    id: str
    admin: str
    name: str
    created: float
    last_used: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from layerboot.server.monitor.model import iso
        return {"id": self.id, "admin": self.admin, "name": self.name, "created": iso(self.created),
                "last_used": iso(self.last_used)}


@dataclass(frozen=True)
class LoginLimits:
    per_account: int = 5
    per_address: int = 20
    window: float = 900.0
    session_idle: float = 8 * 3600.0
    session_max_age: float = 24 * 3600.0

    @classmethod
    def from_config(cls, config: Any) -> "LoginLimits":
        return cls(config.console_login_failures_per_account, config.console_login_failures_per_address,
                   float(config.console_login_window), float(config.console_session_idle),
                   float(config.console_session_max_age))


class Admins:
    """The admins, admin_sessions, api_tokens and login_failures tables."""

    def __init__(self, db: Any, limits: LoginLimits | None = None) -> None:
        self.db = db
        self.limits = limits or LoginLimits()

    # -- accounts ------------------------------------------------------------------------------------------
    def add(self, name: str, password: str) -> Admin:
        check_name(name)
        digest = _hasher().hash(check_password(password))
        if self.find(name) is not None:
            raise LayerbootError(f"admin {name} exists already", hint=f"layerboot admin passwd {name}")
        now = time.time()
        self.db.execute("INSERT INTO admins (name, password_hash, created, password_changed) VALUES (?, ?, ?, ?)",
                        (name, digest, now, now))
        return self.get(name)

    def find(self, name: str) -> Admin | None:
        row = self.db.one("SELECT * FROM admins WHERE name = ?", (name,))
        return Admin(row["name"], row["created"], row["password_changed"], row["last_login"]) if row else None

    def get(self, name: str) -> Admin:
        admin = self.find(check_name(name))
        if admin is None:
            raise NotFoundError(f"no admin account {name}", hint="see 'layerboot admin list'")
        return admin

    def list(self) -> list[Admin]:
        return [Admin(r["name"], r["created"], r["password_changed"], r["last_login"])
                for r in self.db.all("SELECT * FROM admins ORDER BY name")]

    def set_password(self, name: str, password: str) -> Admin:
        """A new password; every session of the account ends (API tokens stay)."""
        admin = self.get(name)
        digest = _hasher().hash(check_password(password))
        with self.db.transaction() as tx:
            tx.execute("UPDATE admins SET password_hash = ?, password_changed = ? WHERE name = ?",
                       (digest, time.time(), admin.name))
            tx.execute("DELETE FROM admin_sessions WHERE admin = ?", (admin.name,))
            tx.execute("DELETE FROM login_failures WHERE account = ?", (admin.name,))
        return self.get(name)

    def remove(self, name: str) -> None:
        admin = self.get(name)
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM admin_sessions WHERE admin = ?", (admin.name,))
            tx.execute("DELETE FROM api_tokens WHERE admin = ?", (admin.name,))
            tx.execute("DELETE FROM admins WHERE name = ?", (admin.name,))

    # -- logging in ----------------------------------------------------------------------------------------
    def wait(self, account: str, address: str, now: float | None = None) -> int:
        """Seconds until a login for ``account`` from ``address`` may be tried again (0: now)."""
        now = time.time() if now is None else now
        since = now - self.limits.window
        waits = []
        for column, value, limit in (("account", account, self.limits.per_account),
                                     ("address", address, self.limits.per_address)):
            if limit <= 0:
                continue
            rows = self.db.all(f"SELECT time FROM login_failures WHERE {column} = ? AND time > ? ORDER BY time DESC "
                               "LIMIT ?", (value, since, limit))
            if len(rows) >= limit:
                waits.append(int(rows[-1]["time"] + self.limits.window - now) + 1)
        return max(waits, default=0)

    def login(self, name: str, password: str, address: str, now: float | None = None) -> Admin:
        """The admin if ``password`` is right and neither the account nor the address is over its limit."""
        from argon2.exceptions import InvalidHashError, VerificationError

        now = time.time() if now is None else now
        account = name if isinstance(name, str) and NAME_RE.fullmatch(name) else "-"
        wait = self.wait(account, address, now)
        if wait:
            raise LoginRefused(f"too many failed logins for {account} or from {address}; try again in {wait} s",
                               status=429, retry_after=wait)
        row = self.db.one("SELECT * FROM admins WHERE name = ?", (account,)) if account != "-" else None
        hasher = _hasher()
        try:
            # an unknown name costs one hash as well (timing does not tell which accounts exist)
            hasher.verify(row["password_hash"] if row else _dummy_hash(), password[:MAX_PASSWORD])
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            self.db.execute("INSERT INTO login_failures (account, address, time) VALUES (?, ?, ?)",
                            (account, address[:64], now))
            self.db.execute("DELETE FROM login_failures WHERE time < ?", (now - 2 * self.limits.window,))
            raise LoginRefused("wrong admin name or password")
        assert row is not None
        updates = "last_login = ?"
        values: list[Any] = [now]
        if hasher.check_needs_rehash(row["password_hash"]):
            updates += ", password_hash = ?"
            values.append(hasher.hash(password))
        with self.db.transaction() as tx:
            tx.execute(f"UPDATE admins SET {updates} WHERE name = ?", (*values, account))
            tx.execute("DELETE FROM login_failures WHERE account = ?", (account,))
        return self.get(account)

    # -- sessions ------------------------------------------------------------------------------------------
    def open_session(self, admin: str, address: str, now: float | None = None) -> tuple[str, Session]:
        """A new session for ``admin``: returns the cookie value (shown once) and the session."""
        now = time.time() if now is None else now
        sid = secrets.token_urlsafe(32)
        expires = min(now + self.limits.session_idle, now + self.limits.session_max_age)
        csrf = secrets.token_urlsafe(32)
        self.db.execute("INSERT INTO admin_sessions (hash, admin, csrf, created, last_seen, expires, address) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (sha256(sid), admin, csrf, now, now, expires, address[:64]))
        self.db.execute("DELETE FROM admin_sessions WHERE expires < ?", (now,))
        return sid, Session(admin, csrf, now, now, expires, sha256(sid))

    def session(self, sid: str, now: float | None = None) -> Session | None:
        """The live session with cookie value ``sid`` (its idle expiry moved on), or None."""
        if not sid or len(sid) > 100:
            return None
        now = time.time() if now is None else now
        row = self.db.one("SELECT * FROM admin_sessions WHERE hash = ?", (sha256(sid),))
        if row is None or row["expires"] <= now:
            return None
        session = Session(row["admin"], row["csrf"], row["created"], row["last_seen"], row["expires"], row["hash"])
        if now - session.last_seen >= TOUCH_EVERY:
            expires = min(now + self.limits.session_idle, session.created + self.limits.session_max_age)
            self.db.execute("UPDATE admin_sessions SET last_seen = ?, expires = ? WHERE hash = ?",
                            (now, expires, session.hash))
        return session

    def close_session(self, sid: str) -> None:
        self.db.execute("DELETE FROM admin_sessions WHERE hash = ?", (sha256(sid),))

    def sessions(self, admin: str) -> int:
        return self.db.scalar("SELECT count(*) FROM admin_sessions WHERE admin = ? AND expires > ?",
                              (admin, time.time()))

    # -- API tokens ----------------------------------------------------------------------------------------
    def create_token(self, admin: str, name: str = "") -> tuple[str, ApiToken]:
        """A new API token for ``admin``: returns the token (shown once) and its record."""
        account = self.get(admin)
        if len(name) > 100 or not name.isprintable():
            raise LayerbootError("a token's name is at most 100 printable characters")
        token_id, secret = secrets.token_hex(4), secrets.token_hex(24)
        token = f"{TOKEN_PREFIX}{token_id}.{secret}"
        self.db.execute("INSERT INTO api_tokens (id, hash, admin, name, created) VALUES (?, ?, ?, ?, ?)",
                        (token_id, sha256(token), account.name, name, time.time()))
        return token, self.token(token_id)

    def token(self, token_id: str) -> ApiToken:
        row = self.db.one("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFoundError(f"no API token {printable(token_id[:20])}", hint="see 'layerboot admin token list'")
        return ApiToken(row["id"], row["admin"], row["name"], row["created"], row["last_used"])

    def tokens(self, admin: str | None = None) -> list[ApiToken]:
        rows = self.db.all("SELECT * FROM api_tokens" + (" WHERE admin = ?" if admin else "") + " ORDER BY created",
                           (admin,) if admin else None)
        return [ApiToken(r["id"], r["admin"], r["name"], r["created"], r["last_used"]) for r in rows]

    def revoke_token(self, token_id: str) -> ApiToken:
        token = self.token(token_id)
        self.db.execute("DELETE FROM api_tokens WHERE id = ?", (token.id,))
        return token

    def token_admin(self, token: str, now: float | None = None) -> str | None:
        """The admin an API token acts as, or None for an unknown or revoked one."""
        match = TOKEN_RE.fullmatch(token)
        if not match:
            return None
        row = self.db.one("SELECT * FROM api_tokens WHERE id = ?", (match.group(1),))
        if row is None or not hmac.compare_digest(row["hash"], sha256(token)):
            return None
        now = time.time() if now is None else now
        if row["last_used"] is None or now - row["last_used"] >= TOKEN_TOUCH_EVERY:
            self.db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, row["id"]))
        return row["admin"]


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(_hasher().hash(secrets.token_hex(16)))
    return _DUMMY[0]
