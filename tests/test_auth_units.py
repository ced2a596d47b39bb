"""The credentials without a daemon: stateless boot tokens, node secrets and their limits, the rate limiter,
asset keys and the database migration that turns registration tokens into node secrets."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.run import run
from layerboot.server.auth.boottoken import BootTokens, load_or_create_key, open_boot_tokens
from layerboot.server.auth.nodesecret import CLAIMED_KEPT, ClaimRefused, NodeSecrets, secret_hash
from layerboot.server.auth.ratelimit import RateLimiter
from layerboot.server.db import connect
from layerboot.server.db.migrate import load_migrations
from layerboot.server.nodes import AuthError, Registry, normalize_asset_key

MAC = "52:54:00:12:34:56"
KEY = "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99:lb-0001"      # an asset key: DMI product_uuid:product_serial


def test_boot_token_round_trip_and_every_tampered_field_is_refused() -> None:
    tokens = BootTokens(b"k" * 32, ttl=100)
    token = tokens.mint(MAC, now=1_000_000)
    assert token.startswith("lbb1.525400123456.1000000.1000100.") and token.isascii() and " " not in token
    parsed = tokens.verify(token, now=1_000_050)
    assert (parsed.mac, parsed.issued, parsed.expires) == (MAC, 1_000_000, 1_000_100)
    prefix, mac, issued, expires, tag = token.split(".")
    for forged in (f"{prefix}.525400abcdef.{issued}.{expires}.{tag}",          # another node
                   f"{prefix}.{mac}.{issued}.{int(expires) + 10**6}.{tag}",   # a longer life
                   f"{prefix}.{mac}.{int(issued) + 5}.{expires}.{tag}",        # issued after a revocation
                   f"{prefix}.{mac}.{issued}.{expires}.{tag[:-1]}{'0' if tag[-1] != '0' else '1'}"):
        with pytest.raises(AuthError, match="invalid boot token"):
            tokens.verify(forged, now=1_000_050)
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(token, now=1_000_101)
    with pytest.raises(AuthError, match="invalid boot token"):        # the key was rotated
        BootTokens(b"x" * 32, ttl=100).verify(token, now=1_000_050)
    for bad in ("", "lbb1", "lbb1.x.y.z.w", token + "0", token.upper(), "lbb1.525400123456.1.2." + "g" * 32):
        with pytest.raises(AuthError):
            tokens.verify(bad, now=1_000_050)


def test_minting_never_invalidates_an_earlier_token() -> None:
    """Issue 11 item 3 at the root: nothing is stored, so no token can be evicted by newer ones."""
    tokens = BootTokens(b"k" * 32, ttl=3600)
    first = tokens.mint(MAC, now=5000)
    for second in range(5000, 5100):
        tokens.mint(MAC, now=second)
    assert tokens.verify(first, now=5200).mac == MAC


def test_the_key_file_is_created_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "boot-token.key"
    tokens = open_boot_tokens(path, 60)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(tokens.key) == 32
    assert load_or_create_key(path) == tokens.key                       # the same key after a restart
    path.chmod(0o644)
    with pytest.raises(LayerbootError, match="readable by others"):
        load_or_create_key(path)
    path.chmod(0o600)
    path.write_text("not hex\n")
    with pytest.raises(LayerbootError, match="cannot read the boot-token key"):
        load_or_create_key(path)


def _registry(tmp_path: Path) -> Registry:
    registry = Registry(connect(tmp_path / "db.sqlite"))
    return registry


def test_register_gives_a_first_secret_and_rotate_replaces_every_one(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    _, first = registry.register(MAC, "p1")
    secrets = NodeSecrets(registry.db)
    assert first.startswith("lbs1.") and secrets.node_of(first) == MAC
    assert [r.origin for r in secrets.list(MAC)] == ["register"]
    assert secrets.list(MAC)[0].hash == secret_hash(first) and first not in str(secrets.list(MAC))
    claimed = secrets.claim(MAC, per_hour=0)
    new = secrets.rotate(MAC)
    assert secrets.node_of(first) is None and secrets.node_of(claimed) is None and secrets.node_of(new) == MAC
    registry.remove(MAC)
    assert secrets.node_of(new) is None                                  # gone with the node


def test_claims_are_limited_per_hour_and_never_evict_a_secret_in_use(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.register(MAC, "p1")
    secrets = NodeSecrets(registry.db)
    in_use = secrets.claim(MAC, per_hour=3, now=1000)
    assert secrets.node_of(in_use) == MAC                                # used once: it must stay valid
    secrets.claim(MAC, per_hour=3, now=1001)
    secrets.claim(MAC, per_hour=3, now=1002)
    with pytest.raises(ClaimRefused) as refused:
        secrets.claim(MAC, per_hour=3, now=1003)
    assert refused.value.status == 429 and 3590 <= refused.value.retry_after <= 3600
    # hours later, many claims: the never-used ones beyond the cap go, oldest first; the used one stays
    later = [secrets.claim(MAC, per_hour=0, now=10_000 + i) for i in range(CLAIMED_KEPT + 5)]
    assert secrets.node_of(in_use) == MAC
    assert all(secrets.node_of(s) is None for s in later[:5])
    assert all(secrets.node_of(s) == MAC for s in later[5:])


@pytest.mark.root
def test_a_claim_on_a_full_database_is_a_503_not_a_crash(tmp_path: Path) -> None:
    full = tmp_path / "small"
    full.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(full)])
    try:
        registry = Registry(connect(full / "db.sqlite"))
        registry.register(MAC, "p1")
        with contextlib.suppress(OSError), open(full / "filler", "wb") as filler:   # fill the filesystem
            while True:
                filler.write(b"x" * 4096)
                filler.flush()
        with pytest.raises(ClaimRefused) as refused:
            for _ in range(1000):                # until the WAL can grow no more
                NodeSecrets(registry.db).claim(MAC, per_hour=0)
        assert refused.value.status == 503 and "full" in refused.value.message
        registry.saw_boot(MAC)                                          # bookkeeping: logged, not raised
        registry.db.close()
    finally:
        run(["umount", "-l", str(full)])


def test_revoking_and_re_registering_move_the_tokens_not_before_time(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.register(MAC, "p1")[0].tokens_not_before == 0
    assert registry.revoke_tokens(MAC, now=12345.6).tokens_not_before == 12345
    node, _ = registry.register(MAC, "p1", replace=True)
    assert node.tokens_not_before > 12345


def test_asset_keys_are_normalised_and_placeholders_refused(tmp_path: Path) -> None:
    assert normalize_asset_key(f" {KEY.upper()}\n") == KEY
    assert normalize_asset_key("6C2B7A1E-3F4D-4B8E-9A10-5D7E2C1B0A99:To Be Filled") == \
        "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99:to be filled"
    for bad in ("6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99", "short:x", "not a uuid:x",
                "00000000-0000-0000-0000-000000000000:serial", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF:",
                "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99:" + "x" * 200, "6c2b7a1e-3f4d:tab\there"):
        with pytest.raises(LayerbootError):
            normalize_asset_key(bad)
    registry = _registry(tmp_path)
    node, _ = registry.register(MAC, "p1", asset_key=KEY.upper())
    assert node.asset_key == KEY and "asset_key" in node.public_dict() and node.public_dict()["asset_key"] is True
    assert registry.set_asset_key(MAC, None).asset_key is None


def test_rate_limiter_allows_a_burst_then_the_average() -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.wait("10.0.0.1", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait("10.0.0.1", now=100.0) == pytest.approx(1.0)
    assert limiter.wait("10.0.0.2", now=100.0) == 0.0                    # per client address
    assert limiter.wait("10.0.0.1", now=101.0) == 0.0                    # one per second comes back
    assert RateLimiter(per_minute=0, burst=0).wait("x") == 0.0           # 0: no limit


def test_old_databases_keep_their_registration_tokens_as_node_secrets(tmp_path: Path) -> None:
    """The schema before stateless tokens: its registration token must still upload after the migration."""
    old_schema = subprocess.run(["git", "show", "ca2af16:server/db.py"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
    if old_schema.returncode:
        pytest.skip("the old schema is not in this checkout's history")
    namespace: dict = {}
    exec(old_schema.stdout.split("def connect")[0], namespace)   # noqa: S102 - our own history
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(namespace["SCHEMA"])
    conn.execute("INSERT INTO nodes (mac, profile, token_hash, created) VALUES (?, 'p1', ?, 'x')",
                 (MAC, secret_hash("a" * 48)))
    conn.execute("INSERT INTO boot_tokens VALUES ('h', ?, 1.0)", (MAC,))
    conn.commit()
    conn.close()
    migrated = connect(db)
    assert migrated.scalar("SELECT max(version) FROM schema_version") == len(load_migrations())
    assert NodeSecrets(migrated).node_of("a" * 48) == MAC
    assert [r.origin for r in NodeSecrets(migrated).list(MAC)] == ["migrated"]
    assert migrated.one("SELECT name FROM sqlite_master WHERE name = 'boot_tokens'") is None
    assert Registry(migrated).get(MAC).tokens_not_before == 0
    migrated.close()
    connect(db).close()                                                  # opening again changes nothing
