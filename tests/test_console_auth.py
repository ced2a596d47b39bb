"""Admin accounts, sessions, API tokens and login limits (server/auth/admins.py) on SQLite and PostgreSQL, and
`layerboot admin` as an admin uses it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.server.auth.admins import Admins, LoginLimits, LoginRefused
from layerboot.server.db import connect
from layerboot.tools.cli import main

PASSWORD = "correct horse battery"


@pytest.fixture
def admins(store, database_url: str) -> Admins:   # noqa: ANN001 - the store fixture makes its directory
    db = connect(database_url)
    yield Admins(db, LoginLimits(per_account=3, per_address=5, window=60, session_idle=100, session_max_age=250))
    db.close()


def test_passwords_are_argon2_hashes_and_logins_check_them(admins: Admins) -> None:
    admins.add("alice", PASSWORD)
    stored = admins.db.scalar("SELECT password_hash FROM admins WHERE name = 'alice'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert admins.login("alice", PASSWORD, "10.0.0.1").last_login is not None
    for name, password in (("alice", "wrong password!"), ("bob", PASSWORD), ("../x", PASSWORD)):
        with pytest.raises(LoginRefused, match="wrong admin name or password") as err:
            admins.login(name, password, "10.0.0.1")
        assert err.value.status == 401
    with pytest.raises(LayerbootError, match="exists already"):
        admins.add("alice", PASSWORD)
    with pytest.raises(LayerbootError, match="at least 10 characters"):
        admins.add("bob", "short")
    with pytest.raises(LayerbootError, match="not an admin account name"):
        admins.add("Bob Smith", PASSWORD)
    with pytest.raises(LayerbootError, match="printable"):
        admins.add("bob", "line one\nline two")
    assert [a.name for a in admins.list()] == ["alice"]


def test_old_hash_parameters_are_upgraded_at_login(admins: Admins) -> None:
    from argon2 import PasswordHasher
    admins.add("alice", PASSWORD)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    admins.db.execute("UPDATE admins SET password_hash = ? WHERE name = 'alice'", (weak,))
    admins.login("alice", PASSWORD, "10.0.0.1")
    assert admins.db.scalar("SELECT password_hash FROM admins WHERE name = 'alice'") != weak
    admins.login("alice", PASSWORD, "10.0.0.1")


def test_failed_logins_are_limited_per_account_and_per_address(admins: Admins) -> None:
    admins.add("alice", PASSWORD)
    admins.add("bob", PASSWORD)
    for _ in range(3):
        with pytest.raises(LoginRefused):
            admins.login("alice", "not the password", "10.0.0.1", now=1000)
    with pytest.raises(LoginRefused, match="too many failed logins") as err:   # even with the right password
        admins.login("alice", PASSWORD, "10.0.0.9", now=1001)
    assert err.value.status == 429 and 59 <= err.value.retry_after <= 61
    assert admins.login("bob", PASSWORD, "10.0.0.1", now=1001).name == "bob"     # other accounts still work
    assert admins.login("alice", PASSWORD, "10.0.0.9", now=1061).name == "alice"  # the window passed
    for name in ("carol", "dave", "erin", "frank", "gina"):     # one address guessing many names
        with pytest.raises(LoginRefused, match="wrong"):
            admins.login(name, "guess guess guess", "10.6.6.6", now=2000)
    with pytest.raises(LoginRefused, match="too many") as err:
        admins.login("bob", PASSWORD, "10.6.6.6", now=2001)
    assert err.value.status == 429
    assert admins.login("bob", PASSWORD, "10.0.0.2", now=2001).name == "bob"


def test_sessions_expire_idle_and_at_their_max_age_and_end_with_the_password(admins: Admins) -> None:
    admins.add("alice", PASSWORD)
    sid, session = admins.open_session("alice", "10.0.0.1", now=1000)
    stored = admins.db.scalar("SELECT hash FROM admin_sessions")
    assert sid not in stored and len(session.csrf) >= 32
    assert admins.session(sid, now=1050).admin == "alice"
    assert admins.session(sid, now=1070) is not None          # a use (a minute after the last) moves idle expiry
    assert admins.session(sid, now=1160) is not None          # ... to 1170, then to 1250 (the max age)
    assert admins.session(sid, now=1240) is not None
    assert admins.session(sid, now=1251) is None               # max age 250 s, however busy
    sid, _ = admins.open_session("alice", "10.0.0.1", now=5000)
    assert admins.session(sid, now=5101) is None               # idle 100 s
    sid, _ = admins.open_session("alice", "10.0.0.1")
    assert admins.session("not-a-session") is None and admins.session("") is None
    admins.set_password("alice", "another long password")
    assert admins.session(sid) is None
    sid, _ = admins.open_session("alice", "10.0.0.1")
    admins.close_session(sid)
    assert admins.session(sid) is None


def test_api_tokens_are_stored_hashed_and_revocable(admins: Admins) -> None:
    admins.add("alice", PASSWORD)
    token, record = admins.create_token("alice", "backup script")
    assert token.startswith(f"lbt1.{record.id}.") and admins.db.scalar("SELECT count(*) FROM api_tokens "
                                                                      "WHERE hash = ?", (token,)) == 0
    assert admins.token_admin(token) == "alice" and admins.token(record.id).last_used is not None
    assert admins.token_admin(token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert admins.token_admin("lbt1.nothex.xyz") is None
    admins.revoke_token(record.id)
    assert admins.token_admin(token) is None
    with pytest.raises(NotFoundError):
        admins.revoke_token(record.id)
    token, _ = admins.create_token("alice")
    admins.remove("alice")
    assert admins.token_admin(token) is None and admins.tokens() == []
    with pytest.raises(NotFoundError, match="no admin account alice"):
        admins.create_token("alice")


def test_admin_cli(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                   capsys: pytest.CaptureFixture[str]) -> None:
    import io
    root = str(store.paths.root)

    def admin(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(["--store", root, "admin", *args])

    assert admin("add", "alice", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert "admin alice created" in capsys.readouterr().out
    assert admin("add", "alice", "--password-stdin", stdin=PASSWORD + "\n") == 1
    assert "admin alice exists already" in capsys.readouterr().err
    assert admin("add", "bob", stdin=PASSWORD + "\n") == 1
    assert "no terminal to ask for the password on" in capsys.readouterr().err
    assert admin("add", "bob", "--password-stdin", stdin="") == 1
    assert "standard input is empty" in capsys.readouterr().err
    assert admin("token", "create", "alice", "--label", "ci", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    assert created["token"].startswith("lbt1.") and created["name"] == "ci"
    assert admin("token", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)["tokens"]
    assert [t["id"] for t in listed] == [created["id"]] and "token" not in listed[0]
    assert admin("passwd", "alice", "--password-stdin", stdin="a brand new password\n") == 0
    assert "sessions are ended" in capsys.readouterr().out
    admins = Admins(connect(store.paths.database))
    assert admins.login("alice", "a brand new password", "127.0.0.1").name == "alice"
    assert admin("list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["admins"][0]["last_login"] is not None
    assert admin("token", "revoke", "ffffffff") == 1
    assert "no API token ffffffff" in capsys.readouterr().err
    assert admin("remove", "alice") == 0 and admin("list") == 0
    assert "no admin accounts yet" in capsys.readouterr().out
    with sqlite3.connect(store.paths.database) as conn:
        assert conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)
