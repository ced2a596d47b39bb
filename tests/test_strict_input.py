"""Out-of-range input (issue 11, item 8): one clear 4xx from layerbootd or one ``layerboot: error:`` line from the
CLI, never a 500 or a traceback, and nothing stored that cannot be served back as strict JSON.

Property tests for the strict JSON reader, the boot-event parser and the Range parser; the concrete cases from
the issue against a real layerbootd and the real CLI.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerboot import strictjson
from layerboot.errors import LayerbootError
from layerboot.overlays.keys import key_id, load_private_key, public_raw
from layerboot.overlays.layer import Layer
from layerboot.overlays.profile import Generation, Profiles
from layerboot.run import run
from layerboot.server.db import connect
from layerboot.server.nodes import Event, Registry
from layerboot.server.objects import RangeError, parse_range
from server_daemon import MAC, Daemon, boot_profile, write_config

# -- the strict reader -------------------------------------------------------------------------------------
strict_scalars = (st.none() | st.booleans() | st.integers(-strictjson.MAX_SAFE_INTEGER, strictjson.MAX_SAFE_INTEGER)
                  | st.floats(allow_nan=False, allow_infinity=False) | st.text())
strict_documents = st.recursive(strict_scalars, lambda inner: st.lists(inner, max_size=4)
                                | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=25)
# what Python's json module writes or reads although strict JSON does not have it
lenient_scalars = (strict_scalars | st.integers() | st.floats() | st.text(st.characters(min_codepoint=0xd800,
                                                                                        max_codepoint=0xdfff)))
lenient_documents = st.recursive(lenient_scalars, lambda inner: st.lists(inner, max_size=4)
                                 | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(strict_documents)
def test_strict_documents_round_trip(document: object) -> None:
    text = strictjson.dumps(document)
    assert strictjson.loads(text, what="x") == document
    assert strictjson.loads(text.encode("utf-8"), what="x") == json.loads(text)


@settings(max_examples=300, deadline=None)
@given(lenient_documents)
def test_whatever_loads_accepts_dumps_writes_back(document: object) -> None:
    text = json.dumps(document)          # may hold NaN, Infinity, huge integers, "\ud800"
    try:
        value = strictjson.loads(text, what="x")
    except strictjson.JSONError as err:
        assert err.message.startswith("x ") and "\n" not in err.message
        return
    assert json.loads(strictjson.dumps(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_document_or_one_json_error(data: bytes) -> None:
    try:
        strictjson.dumps(strictjson.loads(data, what="x"))
    except strictjson.JSONError:
        pass


@pytest.mark.parametrize(("text", "reason"), [
    ('{"a": Infinity}', "Infinity is not a JSON number"),
    ("[NaN]", "NaN is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"),
    ("1e999", "the number 1e999 is out of range"),
    ("9" * 5000, "(5000 characters) is out of range"),
    ("9007199254740992", "out of range (at most 9007199254740991 either way)"),
    ('"\\ud800"', "lone surrogate"),
    ('{"k": "\\udfff x"}', "lone surrogate"),
    ("[" * 5000 + "]" * 5000, "nested more than 32 levels deep"),
    ("[" * 33 + "]" * 33, "nested more than 32 levels deep"),
    ('{"a": 1, "a": 2}', "the key 'a' appears twice"),
    ("{'a': 1}", "is not valid JSON"),
])
def test_what_strict_json_refuses(text: str, reason: str) -> None:
    with pytest.raises(strictjson.JSONError, match="^boot event ") as caught:
        strictjson.loads(text, what="boot event")
    assert reason in caught.value.message
    assert strictjson.loads("[" * 32 + "]" * 32, what="x") is not None
    with pytest.raises(strictjson.JSONError, match="not UTF-8"):
        strictjson.loads(b'{"a": "\xff"}', what="x")


# -- boot events -------------------------------------------------------------------------------------------
def parse_event(raw: bytes) -> Event:
    """What layerbootd does with a posted body."""
    return Event.from_json(strictjson.loads(raw, what="boot event"))


numbers = (st.integers() | st.floats() | st.sampled_from([2 ** 53, 2 ** 63, -1, 1e9, 1e9 + 1, -0.0]))
event_fields = st.fixed_dictionaries({}, optional={
    "stage": st.sampled_from(["layers", "net", "Fetch", "x\n", "", "a" * 33]) | st.text(max_size=5),
    "ok": st.booleans() | st.none() | numbers,
    "generation": numbers | st.none() | st.booleans(),
    "serial": numbers | st.none(),
    "elapsed": numbers | st.none() | st.text(max_size=3),
    "message": st.text(max_size=50) | st.text(st.characters(min_codepoint=0xd800, max_codepoint=0xdfff), min_size=1)
    | st.text(min_size=2001, max_size=2100) | numbers,
    "timings": st.dictionaries(st.sampled_from(["net", "layers", "Bad Key", "x\n"]) | st.text(max_size=4),
                               numbers | st.text(max_size=2), max_size=4) | st.lists(numbers, max_size=2),
})


@pytest.fixture(scope="module")
def event_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    conn = connect(tmp_path_factory.mktemp("events") / "layerbootd.sqlite")
    registry = Registry(conn)
    registry.register(MAC, "p1")
    yield registry
    conn.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event_fields)
def test_event_parser_accepts_only_what_is_stored_and_served_back_exactly(event_registry: Registry,
                                                                        fields: dict) -> None:
    raw = json.dumps(fields).encode("utf-8", "surrogatepass")
    try:
        event = parse_event(raw)
    except LayerbootError as err:
        assert "\n" not in err.message and err.message
        return
    event_registry.record_event(MAC, event)
    stored = event_registry.events(MAC, limit=1)[-1]
    served = strictjson.dumps(stored.__dict__)                  # what GET /nodes/MAC sends
    assert strictjson.loads(served, what="served event") == json.loads(served)
    assert (stored.stage, stored.ok, stored.generation, stored.serial, stored.timings) == \
        (event.stage, event.ok, event.generation, event.serial, event.timings)
    assert stored.elapsed == event.elapsed and stored.message == event.message
    for value in (event.elapsed, *event.timings.values()):
        assert value is None or (math.isfinite(value) and 0 <= value <= 1e9)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_event_parser_on_any_bytes_returns_an_event_or_one_error(raw: bytes) -> None:
    try:
        parse_event(raw)
    except LayerbootError as err:
        assert "\n" not in err.message


# -- Range -------------------------------------------------------------------------------------------------
sizes = st.integers(0, 2 ** 40)
digits = st.text("0123456789", max_size=30) | st.integers(0, 5000).map(lambda n: "9" * n)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.builds(lambda a, b: f"bytes={a}-{b}", digits, digits), sizes)
def test_range_parser_returns_a_range_inside_the_object_or_range_error(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeError as err:
        assert str(err) and "\n" not in str(err)
        return
    if result is not None:
        offset, count = result
        assert 0 <= offset and count >= 1 and offset + count <= size


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2 ** 40).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size - 1),
                                                                st.integers(0, 2 ** 41))))
def test_range_parser_serves_what_rfc_9110_says(case: tuple[int, int, int]) -> None:
    size, first, last = case
    if last < first:
        with pytest.raises(RangeError):
            parse_range(f"bytes={first}-{last}", size)
    else:
        assert parse_range(f"bytes={first}-{last}", size) == (first, min(last, size - 1) - first + 1)
    assert parse_range(f"bytes={first}-", size) == (first, size - first)
    if last:
        assert parse_range(f"bytes=-{last}", size) == (max(size - last, 0), min(last, size))
    else:
        with pytest.raises(RangeError):
            parse_range("bytes=-0", size)
    with pytest.raises(RangeError):
        parse_range(f"bytes={size}-", size)
    assert parse_range("bytes=-" + "9" * 5000, size) == (0, size)
    assert parse_range(f"bytes={first}-" + "9" * 5000, size) == (first, size - first)
    with pytest.raises(RangeError):
        parse_range("bytes=" + "9" * 5000 + "-", size)
    assert parse_range(f"items={first}-", size) is None      # another range unit: the whole object


# -- against a real layerbootd -----------------------------------------------------------------------------
@pytest.fixture
def daemon(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[Daemon]:
    digests = boot_profile(profiles, make_layer, tmp_path, "p1")
    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths), tmp_path / "log")
    _, daemon.token = daemon.registry().register(MAC, "p1")  # type: ignore[attr-defined]
    daemon.digests = digests  # type: ignore[attr-defined]
    daemon.start()
    yield daemon
    daemon.stop()
    assert "Traceback" not in daemon.log.read_text(), daemon.log.read_text()


BAD_EVENTS = [
    ('{"stage": "x", "ok": true, "elapsed": Infinity}', "Infinity is not a JSON number"),
    ('{"stage": "x", "ok": true, "elapsed": NaN}', "NaN is not a JSON number"),
    ('{"stage": "x", "ok": true, "elapsed": 1e999}', "the number 1e999 is out of range"),
    ('{"stage": "x", "ok": true, "elapsed": -1}', "'elapsed' must be a number of seconds from 0"),
    ('{"stage": "x", "ok": true, "generation": ' + "9" * 5000 + "}", "(5000 characters) is out of range"),
    ('{"stage": "x", "ok": true, "serial": 9223372036854775808}', "is out of range"),
    ('{"stage": "x", "ok": true, "message": "\\ud800"}', "lone surrogate"),
    ("[" * 5000 + "]" * 5000, "nested more than 32 levels deep"),
    ('{"stage": "x", "ok": true, "timings": {"net": 1e999}}', "out of range"),
    ('{"stage": "x", "ok": true, "timings": {"net\\n": 1}}', "'timings' must be an object"),
    ('{"stage": "x\\n", "ok": true}', "'stage' must be a short lowercase word"),
    ('{"stage": "x", "ok": true, "ok": false}', "the key 'ok' appears twice"),
]


def test_out_of_range_boot_events_get_one_clear_400_and_nothing_is_stored(daemon: Daemon) -> None:
    token = daemon.token  # type: ignore[attr-defined]
    path = f"/nodes/{MAC}/events"
    for body, reason in BAD_EVENTS:
        reply = daemon.request("POST", path, body=body.encode(), token=token, headers={"Accept": "application/json"})
        assert reply.status == 400, (body[:80], reply.text)
        error = strictjson.loads(reply.body, what="reply")["error"]
        assert reason in error and "\n" not in error, (body[:80], error)
        text = daemon.request("POST", path, body=body.encode(), token=token)
        assert text.status == 400 and len(text.text.splitlines()) == 1, text.text
        assert text.text.startswith(("layerboot: error: boot event ", "layerboot: error: event ")), text.text
    big = daemon.request("POST", path, body=b'{"stage": "x", "ok": true, "message": "' + b"a" * 20000 + b'"}',
                         token=token)
    assert big.status == 413
    assert daemon.registry().events(MAC) == []
    good = daemon.request("POST", path, token=token, body=json.dumps(
        {"stage": "layers", "ok": True, "elapsed": 3.25, "generation": 2 ** 53 - 1, "message": "ok \u00e9",
         "timings": {"net": 0.5}}).encode())
    assert good.status == 201
    status = daemon.get(f"/nodes/{MAC}", token=token, headers={"Accept": "application/json"})
    [event] = strictjson.loads(status.body, what="node status")["events"]
    assert event["generation"] == 2 ** 53 - 1 and event["elapsed"] == 3.25 and event["message"] == "ok \u00e9"


def test_events_stored_by_older_versions_are_served_as_strict_json(daemon: Daemon) -> None:
    """Before the range checks, Infinity and NaN were stored, then served as invalid JSON."""
    conn = sqlite3.connect(daemon.paths.database)
    with conn:
        conn.execute("INSERT INTO events (mac, time, stage, ok, elapsed, message, timings) VALUES "
                     "(?, '2026-01-01T00:00:00+00:00', 'x', 1, ?, '', ?)",
                     (MAC, float("inf"), '{"net": Infinity, "layers": NaN, "ok": 1.5}'))
    conn.close()
    token = daemon.token  # type: ignore[attr-defined]
    reply = daemon.get(f"/nodes/{MAC}", token=token, headers={"Accept": "application/json"})
    assert reply.status == 200
    [event] = strictjson.loads(reply.body, what="node status")["events"]
    assert event["elapsed"] is None and event["timings"] == {"ok": 1.5}
    shown = run([sys.executable, "-m", "layerboot", "--store", daemon.paths.root, "nodes", "show", MAC, "--json"])
    assert strictjson.loads(shown.stdout, what="nodes show")["events"][0]["timings"] == {"ok": 1.5}


def test_a_5000_digit_range_is_a_clear_416_or_the_clamped_range(daemon: Daemon) -> None:
    token = daemon.token  # type: ignore[attr-defined]
    digest = daemon.digests["kernel"]  # type: ignore[attr-defined]
    data = daemon.paths.object(digest).read_bytes()
    url = f"/objects/{digest}"
    start = daemon.get(url, token=token, headers={"Range": "bytes=" + "9" * 5000 + "-", "Accept": "application/json"})
    assert start.status == 416 and start.headers["content-range"] == f"bytes */{len(data)}"
    assert "starts beyond the object" in start.json()["error"]
    end = daemon.get(url, token=token, headers={"Range": "bytes=10-" + "9" * 5000})
    assert end.status == 206 and end.body == data[10:]
    assert end.headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    suffix = daemon.get(url, token=token, headers={"Range": "bytes=-" + "9" * 5000})
    assert suffix.status == 206 and suffix.body == data
    assert daemon.get(url, token=token, headers={"Range": "bytes=5-2"}).status == 416
    assert daemon.get(url, token=token, headers={"Range": "bytes=1-2,4-5"}).status == 416
    # undecodable bytes in a token: aiohttp hands them on as surrogates, which cannot be hashed
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(b"GET " + url.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                 b"Connection: close\r\n\r\n")
    assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 401 ")
    sock.close()
    assert daemon.get(url + "?token=%ED%A0%80").status == 401
    # a Content-Length nobody can hold: aiohttp's 400, logged as one line
    length = daemon.request("PUT", f"/nodes/{MAC}/uploads/x.tar.zst", token=token, body=b"",
                            headers={"Content-Length": "9" * 5000})
    assert length.status == 400
    assert "Error handling request from 127.0.0.1: 400 Content-Length overflow" in daemon.log.read_text()


# -- the CLI -----------------------------------------------------------------------------------------------
def layerboot(*args: object) -> tuple[int, list[str]]:
    result = run([sys.executable, "-m", "layerboot", *map(str, args)], check=False)
    return result.returncode, result.stderr.decode().splitlines()


def signed(profiles: Profiles, payload: str) -> bytes:
    key = load_private_key(profiles.paths.signing_key)
    return json.dumps({"format": "layerboot-signed/1", "key_id": key_id(public_raw(key.public_key())),
                       "signature": base64.b64encode(key.sign(payload.encode())).decode(),
                       "payload": payload}).encode()


def test_manifest_verify_gives_one_error_line_for_out_of_range_numbers(profiles: Profiles, make_layer,
                                                                       tmp_path: Path) -> None:
    boot_profile(profiles, make_layer, tmp_path, "p1")
    store = profiles.paths.root
    good = profiles.signed_manifest("p1")
    envelope = json.loads(good)
    cases = {
        "envelope": good.replace(b'"format"', b'"x": ' + b"9" * 5000 + b', "format"', 1),
        "payload": signed(profiles, envelope["payload"].replace('"serial": ', '"serial": ' + "9" * 5000 + ", "
                                                                '"x": ', 1)),
        "infinity": signed(profiles, envelope["payload"].replace('"generation": 2', '"generation": Infinity')),
        "nesting": b"[" * 100000 + b"]" * 100000,
        "type": signed(profiles, json.dumps(json.loads(envelope["payload"]) | {"cmdline": 5})),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        status, lines = layerboot("--store", store, "manifest", "verify", tmp_path / name)
        assert status == 1 and len(lines) == 1 and lines[0].startswith("layerboot: error: "), (name, lines)
    (tmp_path / "good").write_bytes(good)
    assert layerboot("--store", store, "manifest", "verify", tmp_path / "good")[0] == 0


def test_config_and_store_records_with_out_of_range_numbers_are_one_line_errors(store, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    for text, reason in [("[server]\nport = " + "9" * 5000, "4300 digits"), ("[server]\nport = 70000", "TCP port"),
                         ("[server]\nread_timeout = 0", "seconds from 1"), ("[bake]\nmax_files = -1", "from 0"),
                         ("[server]\nqueue_size = 9223372036854775808", "a larger one"),
                         ("[bake]\nthreads = 100000", "threads from 0 to 1024")]:
        config.write_text(text + "\n")
        status, lines = layerboot("--config", config, "config", "show")
        assert status == 1 and len(lines) == 1 and reason in lines[0], (text[:40], lines)
    layerbootd = run([sys.executable, "-m", "layerboot.server.main", "--port", "99999"], check=False)
    assert layerbootd.returncode == 1 and b"is not a TCP port" in layerbootd.stderr   # usage errors exit 1
    (tmp_path / "upper").mkdir()
    for option, value in (("--level", "99"), ("--threads", "9" * 20), ("--threads", "-1")):
        status, lines = layerboot("capture", "--upper", tmp_path / "upper", "-o", tmp_path / "x.tar.zst", option, value)
        error = next(line for line in lines if ": error: " in line)
        assert status == 1 and error.startswith(f"layerboot: error: capture: argument {option}: ") and \
            "is not a whole number from" in error, lines
    (tmp_path / "c.tar.zst").write_bytes(b"x")
    secret = tmp_path / "node.secret"
    secret.write_text("lbs1." + "ab" * 24 + "\n")
    secret.chmod(0o600)
    for url in ("http://x:99999", "http://[::1", "ftp://x"):
        status, lines = layerboot("upload", tmp_path / "c.tar.zst", "--server", url, "--node", MAC,
                                  "--secret-file", secret)
        assert status == 1 and len(lines) == 1 and lines[0].startswith(f"layerboot: error: server URL '{url}'"), lines
    for record in (Layer, Generation):
        with pytest.raises(LayerbootError, match="record is refused"):
            record.from_json('{"size": ' + "9" * 5000 + "}")
