"""Who may do what, against the real layerbootd on loopback: read-only boot tokens, node secrets and their
claims, revocation, rate limits, a full store disk at boot time, and log/terminal injection."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.run import run
from layerboot.server.auth.claim import claim_proof
from layerboot.server.auth.nodesecret import NodeSecrets
from layerboot.server.nodes import Event
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, write_config
from test_server_uploads import layer_upload

KEY = "6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99:lb-0001"      # an asset key: DMI product_uuid:product_serial
JSON = {"Accept": "application/json"}


def _start(profiles: Profiles, tmp_path: Path, **server: object) -> Daemon:
    config = write_config(tmp_path / "layerboot.toml", profiles.paths, **server)
    daemon = Daemon(profiles.paths, config, tmp_path / "layerbootd.log")
    registry = daemon.registry()
    registry.register(MAC, "p1", asset_key=KEY)
    _, daemon.other_secret = registry.register(OTHER_MAC, "p2")  # type: ignore[attr-defined]
    return daemon.start()


@pytest.fixture
def setup(profiles: Profiles, make_layer, tmp_path: Path) -> dict[str, str]:  # noqa: ANN001
    digests = boot_profile(profiles, make_layer, tmp_path, "p1")
    digests.update({f"p2_{k}": v for k, v in boot_profile(profiles, make_layer, tmp_path, "p2").items()})
    return digests


@pytest.fixture
def daemon(profiles: Profiles, setup: dict[str, str], tmp_path: Path) -> Iterator[Daemon]:
    daemon = _start(profiles, tmp_path)
    try:
        yield daemon
    finally:
        daemon.stop()


def claim(daemon: Daemon, token: str, proof: str | None, mac: str = MAC):  # noqa: ANN201
    body = json.dumps({"proof": proof} if proof is not None else {}).encode()
    return daemon.request("POST", f"/nodes/{mac}/secret", token=token, body=body, headers=JSON)


def test_a_boot_token_reads_its_node_only_and_writes_nothing(daemon: Daemon, setup: dict[str, str]) -> None:
    # the node's boot script hands it one boot token, for its kernel command line and its downloads (two scripts
    # fetched a second apart carry different tokens: each names the time it was minted)
    script = daemon.get(f"/boot/{MAC}.ipxe").text
    token = script.split("layerboot.token=")[1].split()[0]
    assert token.startswith("lbb1." + MAC.replace(":", "") + ".") and f"?token={token}\n" in script, script
    assert daemon.get(f"/nodes/{MAC}/manifest", token=token).status == 200
    assert daemon.get(f"/objects/{setup['base']}?token={token}").status == 200
    event = json.dumps({"stage": "net", "ok": True}).encode()
    assert daemon.request("POST", f"/nodes/{MAC}/events", token=token, body=event).status == 201
    refused = {
        "upload": daemon.request("PUT", f"/nodes/{MAC}/uploads/a.tar.zst", token=token, headers=JSON,
                                 body=layer_upload({"etc/x": b"x"})),
        "upload status": daemon.get(f"/nodes/{MAC}/uploads/20260101000000-00000000", token=token, headers=JSON),
        "node status": daemon.get(f"/nodes/{MAC}", token=token, headers=JSON),
        "node list": daemon.get("/nodes", token=token, headers=JSON),
    }
    for what, reply in refused.items():
        assert reply.status == 403, what
    assert "boot tokens are read-only" in refused["upload"].json()["error"]
    assert "node secret" in refused["upload status"].json()["error"]
    # another node's data with this token, or the admin's routes: also 403
    assert daemon.get(f"/nodes/{OTHER_MAC}/manifest", token=token).status == 403
    assert daemon.get(f"/objects/{setup['p2_overlay']}", token=token).status == 403


def test_a_node_secret_never_goes_in_a_url(daemon: Daemon, setup: dict[str, str]) -> None:
    reply = daemon.get(f"/objects/{setup['p2_base']}?token={daemon.other_secret}", headers=JSON)  # type: ignore
    assert reply.status == 401 and "only a boot token may be given as ?token=" in reply.json()["error"]
    with_header = daemon.get(f"/objects/{setup['p2_base']}", token=daemon.other_secret)  # type: ignore
    assert with_header.status == 200


def test_many_anonymous_boot_scripts_never_revoke_the_token_a_node_boots_with(daemon: Daemon) -> None:
    """Issue 11 item 3: nine fetches of /boot/MAC.ipxe used to evict the token stage1 was using."""
    booting = daemon.boot_token()
    for _ in range(20):
        assert daemon.get(f"/boot/{MAC}.ipxe").status == 200
    assert daemon.get(f"/nodes/{MAC}/manifest", token=booting).status == 200


def test_revoke_tokens_refuses_the_old_ones_and_new_ones_work(daemon: Daemon, capsys) -> None:  # noqa: ANN001
    from layerboot.tools.cli import main

    old = daemon.boot_token()
    assert main(["--store", str(daemon.paths.root), "nodes", "revoke-tokens", MAC]) == 0
    assert "are refused" in capsys.readouterr().out
    refused = daemon.get(f"/nodes/{MAC}/manifest", token=old, headers=JSON)
    assert refused.status == 401 and "revoked" in refused.json()["error"]
    import time
    time.sleep(1.1)                                    # tokens carry whole seconds
    assert daemon.get(f"/nodes/{MAC}/manifest", token=daemon.boot_token()).status == 200
    # an admin-minted token (for the command line of an A/B disk) is a boot token like the others
    assert main(["--store", str(daemon.paths.root), "nodes", "boot-token", MAC, "--ttl", "600"]) == 0
    minted = capsys.readouterr().out.strip()
    assert daemon.get(f"/nodes/{MAC}/manifest", token=minted).status == 200
    assert daemon.request("PUT", f"/nodes/{MAC}/uploads/a.tar.zst", token=minted, body=b"x").status == 403


def test_claims_need_the_asset_key_proof_and_hand_out_a_working_secret(daemon: Daemon) -> None:
    token = daemon.boot_token()
    assert claim(daemon, token, None).status == 403
    wrong = claim(daemon, token, claim_proof("6c2b7a1e-3f4d-4b8e-9a10-5d7e2c1b0a99:", token))   # no serial
    assert wrong.status == 403 and "asset key proof" in wrong.json()["error"]
    other_token = daemon.boot_token(OTHER_MAC)        # registered without an asset key
    no_key = claim(daemon, other_token, None, mac=OTHER_MAC)
    assert no_key.status == 403 and "has no asset key" in no_key.json()["error"]
    assert "node_secret_claim" in no_key.json()["hint"]
    # the proof is bound to the token: one made for another token does not work
    assert claim(daemon, token, claim_proof(KEY, daemon.boot_token(OTHER_MAC))).status == 403
    admin = (daemon.paths.state / "admin.token").read_text().strip()
    assert claim(daemon, admin, claim_proof(KEY, admin)).status == 403          # only a boot token claims
    good = claim(daemon, token, claim_proof(KEY, token))
    assert good.status == 201 and good.headers["cache-control"] == "no-store"
    secret = good.json()["secret"]
    reply = daemon.request("PUT", f"/nodes/{MAC}/uploads/a.tar.zst", token=secret, headers=JSON,
                           body=layer_upload({"etc/claimed": b"yes\n"}))
    assert reply.status == 202
    # a later claim does not invalidate the secret in use
    assert claim(daemon, token, claim_proof(KEY, token)).status == 201
    assert daemon.get(f"/nodes/{MAC}/uploads/{reply.json()['id']}", token=secret).status == 200
    log = daemon.log.read_text()
    assert secret not in log and KEY not in log and "claimed a node secret (asset key)" in log


def test_mac_only_claims_when_the_admin_trusts_the_boot_network(profiles: Profiles, setup: dict[str, str],
                                                               tmp_path: Path) -> None:
    daemon = _start(profiles, tmp_path, node_secret_claim="mac", node_secret_claims_per_hour=2)
    try:
        token = daemon.boot_token(OTHER_MAC)
        assert [claim(daemon, token, None, mac=OTHER_MAC).status for _ in range(3)] == [201, 201, 429]
        limited = claim(daemon, token, None, mac=OTHER_MAC)
        assert int(limited.headers["retry-after"]) > 3000 and "claimed 2 secrets" in limited.json()["error"]
        # a node with an asset key still needs its proof
        assert claim(daemon, daemon.boot_token(), None).status == 403
    finally:
        daemon.stop()


def test_boot_scripts_are_rate_limited_per_client_address(profiles: Profiles, setup: dict[str, str],
                                                         tmp_path: Path) -> None:
    daemon = _start(profiles, tmp_path, boot_scripts_per_minute=3)
    try:
        statuses = [daemon.get(f"/boot/{MAC}.ipxe").status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        ipxe = daemon.get(f"/boot/{MAC}.ipxe", headers={"User-Agent": "iPXE/1.21.1"})
        assert ipxe.status == 200 and "echo layerboot: too many boot scripts" in ipxe.text
    finally:
        daemon.stop()


@pytest.mark.root
def test_a_full_store_disk_does_not_stop_a_netboot(profiles: Profiles, setup: dict[str, str],
                                                   tmp_path: Path) -> None:
    """Issue 11 item 9 (boot part): /boot, the manifest and the layers need no disk write; bookkeeping and
    claims answer 503 and the daemon logs why, but nothing is a 500."""
    state = profiles.paths.state
    saved = tmp_path / "state-before"
    run(["cp", "-a", str(state), str(saved)])
    run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(state)])
    try:
        run(["cp", "-a", f"{saved}/.", str(state)])
        daemon = _start(profiles, tmp_path)
        try:
            assert daemon.get(f"/boot/{MAC}.ipxe").status == 200
            # an empty write-ahead log, so that every database write needs new space (else SQLite reuses it)
            daemon.registry().db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
            finally:
                os.close(fd)
            # the database really cannot be written now
            with pytest.raises(Exception, match="full"):
                daemon.registry().record_event(OTHER_MAC, Event(stage="net", ok=True, message="x" * 2000))
            script = daemon.get(f"/boot/{MAC}.ipxe")
            assert script.status == 200
            token = script.text.split("layerboot.token=")[1].split()[0]
            assert daemon.get(f"/nodes/{MAC}/manifest", token=token).status == 200
            assert daemon.get(f"/objects/{setup['base']}", token=token).status == 200
            event = daemon.request("POST", f"/nodes/{MAC}/events", token=token, headers=JSON,
                                   body=json.dumps({"stage": "net", "ok": True}).encode())
            assert event.status == 503 and "cannot record the event now" in event.json()["error"]
            full_claim = claim(daemon, token, claim_proof(KEY, token))
            assert full_claim.status == 503 and "cannot record a secret" in full_claim.json()["error"]
            log = daemon.log.read_text()
            assert "could not record the boot of" in log and "internal error" not in log
        finally:
            daemon.stop()
    finally:
        run(["umount", "-l", str(state)])


def test_hostile_event_text_is_escaped_in_the_log_and_on_the_admins_terminal(
        profiles: Profiles, setup: dict[str, str], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from layerboot.tools.cli import main

    daemon = _start(profiles, tmp_path, debug=True)
    try:
        token = daemon.boot_token()
        message = ("boom\n2030-01-01 00:00:00 ERROR layerboot.server: FORGED\r\x1b[31mred\x1b[0m "
                   "\x1b]0;pwned title\x07 \x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\ \u202eevil\x9b2J")
        event = {"stage": "layers", "ok": False, "message": message}
        assert daemon.request("POST", f"/nodes/{MAC}/events", token=token, body=json.dumps(event).encode()).status \
            == 201
        # aiohttp itself refuses control characters in headers; bytes >= 0x80 pass: a C1 CSI (0x9b), a bidi
        # override in UTF-8, a byte that is not UTF-8 at all
        user_agent = b"curl \x9b2J \xe2\x80\xae rtl \xff"
        assert daemon.get("/status%1b%5b2J%0aFORGED-PATH", headers={"User-Agent": user_agent}).status == 404
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    assert "\x1b" not in log and "\x07" not in log and "\u202e" not in log and "\x9b" not in log and "\r" not in log
    assert not re.search(r"^\S+ \S+ ERROR layerboot.server: FORGED", log, re.M)
    assert not re.search(r"^FORGED-PATH", log, re.M)
    assert "boom\\n2030-01-01" in log and "\\x1b[31mred" in log and "\\u202eevil" in log
    assert "/status\\x1b[2J\\nFORGED-PATH" in log
    assert re.search(r"'curl (\\x9b|\\udc9b)2J (\\u202e|\\udce2\\udc80\\udcae) rtl (\\xff|\\udcff)'", log), log[-2000:]
    for args in (["nodes", "show", MAC], ["nodes"]):
        assert main(["--store", str(daemon.paths.root), *args]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\r" not in out
    assert main(["--store", str(daemon.paths.root), "nodes", "show", MAC]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " layers " in line]
    assert len(rows) == 1 and "boom\\n2030" in rows[0] and "FORGED" in rows[0]
    # JSON output escapes on its own (and stays parseable)
    assert main(["--store", str(daemon.paths.root), "nodes", "show", MAC, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"][-1]["message"] == message


def test_node_secrets_from_the_cli(daemon: Daemon, capsys) -> None:  # noqa: ANN001
    from layerboot.tools.cli import main

    root = str(daemon.paths.root)
    assert main(["--store", root, "nodes", "secret", "rotate", OTHER_MAC]) == 0
    new = capsys.readouterr().out.split("stored): ")[1].split()[0]
    assert daemon.get(f"/nodes/{OTHER_MAC}", token=daemon.other_secret).status == 401  # type: ignore
    assert daemon.get(f"/nodes/{OTHER_MAC}", token=new).status == 200
    assert main(["--store", root, "nodes", "secret", "list", OTHER_MAC]) == 0
    listing = capsys.readouterr().out
    assert "rotate" in listing and new not in listing
    assert main(["--store", root, "nodes", "set", OTHER_MAC, "--asset-key", "00000000-0000-0000-0000-000000000000:"]) \
        == 1
    assert "placeholder UUID" in capsys.readouterr().err
    assert main(["--store", root, "nodes", "set", OTHER_MAC, "--asset-key", KEY.upper()]) == 0
    assert daemon.registry().get(OTHER_MAC).asset_key == KEY
    assert len(NodeSecrets(daemon.registry().db).list(OTHER_MAC)) == 1
