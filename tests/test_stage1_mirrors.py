"""stage1's mirror choice (initrd/stage1/sources.py) and fetch fallback against real local HTTP servers: a
mirror that is down, one that dies mid-body, one that sends wrong bytes, per-node layers kept on the origin,
latency order; and the signed manifest's mirror fields on both sides (server signs, stage1 parses)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import pytest

from layerboot.initrd.stage1.cmdline import CmdlineError, parse_cmdline
from layerboot.initrd.stage1.fetch import FetchError, fetch_layers
from layerboot.initrd.stage1.sources import Sources, mirrorable
from layerboot.initrd.stage1.verify import Layer, VerifyError, parse_payload
from layerboot.overlays.manifest import Artifact, Manifest, ManifestError
from layerboot.errors import LayerbootError
from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.settings import config_as_toml, load_config
from test_stage1_fetch import Server, blob


@pytest.fixture
def trio():
    """An origin and two mirrors, each a real HTTP server holding the same objects (unless a test spoils one)."""
    servers = [Server(), Server(), Server()]
    yield servers
    for server in servers:
        server.httpd.shutdown()


def add(servers: list[Server], data: bytes) -> Layer:
    layers = [server.add(data) for server in servers]
    return layers[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def paths_asked(server: Server) -> list[str]:
    return [path for path, _, _ in server.requests]


def test_listed_mirrors_serve_everything_and_the_origin_sees_nothing(trio, tmp_path: Path) -> None:
    origin, first, second = trio
    layers = tuple(add(trio, blob(n, i)) for i, n in enumerate((3_000_000, 70_000, 10)))
    lines: list[str] = []
    sources = Sources(origin.url, (first.url, second.url), "listed", say=lines.append)
    paths = fetch_layers(origin.url, "tok", layers, str(tmp_path), timeout=5, sources=sources)
    assert [Path(p).read_bytes() for p in paths] == [origin.blobs[layer.digest] for layer in layers]
    assert sorted(paths_asked(first)) == sorted(f"/{layer.path}" for layer in layers)
    assert origin.requests == [] and second.requests == [] and lines == []
    assert {auth for _, _, auth in first.requests} == {"Bearer tok"}   # the mirror passes it on when it misses
    assert sources.bytes == {first.url: sum(layer.size for layer in layers)}


def test_a_dead_mirror_is_skipped_and_said_once(trio, tmp_path: Path) -> None:
    origin, _, second = trio
    dead = closed_port_url()
    layers = tuple(add(trio, blob(100_000, i)) for i in range(3))
    lines: list[str] = []
    sources = Sources(origin.url, (dead, second.url), "listed", say=lines.append)
    fetch_layers(origin.url, "tok", layers, str(tmp_path), timeout=5, sources=sources)
    assert len(second.requests) == 3 and origin.requests == []
    assert len(lines) == 1 and lines[0].startswith(f"mirror {dead}: GET ") and "using the next source" in lines[0]
    assert dead in sources.down


def test_a_mirror_dying_mid_body_hands_over_with_a_range_request(trio, tmp_path: Path) -> None:
    origin, first, second = trio
    layer = add(trio, blob(2_000_000, 3))
    first.cut_first = 1
    sources = Sources(origin.url, (first.url, second.url), "listed")
    [path] = fetch_layers(origin.url, "tok", (layer,), str(tmp_path), timeout=5, sources=sources)
    assert Path(path).read_bytes() == origin.blobs[layer.digest]
    assert second.requests == [(f"/{layer.path}", "bytes=1000000-", "Bearer tok")]   # resumed, not restarted
    assert origin.requests == [] and first.url in sources.down
    assert sources.bytes == {first.url: 1_000_000, second.url: 1_000_000}


def test_wrong_bytes_from_a_mirror_start_over_at_the_next_source(trio, tmp_path: Path) -> None:
    origin, first, second = trio
    layer = add(trio, blob(500_000, 4))
    first.blobs[layer.digest] = first.blobs[layer.digest][:-1] + b"!"     # a damaged cache
    second.blobs[layer.digest] += b"junk"                                # a confused one
    lines: list[str] = []
    sources = Sources(origin.url, (first.url, second.url), "listed", say=lines.append)
    [path] = fetch_layers(origin.url, "tok", (layer,), str(tmp_path), timeout=5, sources=sources)
    assert Path(path).read_bytes() == origin.blobs[layer.digest]
    assert origin.requests == [(f"/{layer.path}", "", "Bearer tok")]     # from the start, not resumed
    assert set(sources.down) == {first.url, second.url}
    assert "not the signed ones" in lines[0] and len(lines) == 2


def test_the_origin_failing_too_is_the_usual_one_line_error(trio, tmp_path: Path) -> None:
    origin, first, _ = trio
    layer = add(trio, blob(10_000, 5))
    first.blobs[layer.digest] = b"x" * 10_000
    origin.blobs[layer.digest] = b"y" * 10_000
    with pytest.raises(FetchError, match=f"layer {layer.digest[:12]} failed verification: got 10000 bytes"):
        fetch_layers(origin.url, "tok", (layer,), str(tmp_path), retries=1, timeout=5,
                     sources=Sources(origin.url, (first.url,), "listed"))
    assert not list(tmp_path.iterdir())


def test_a_layer_not_published_under_its_digest_never_goes_to_a_mirror(trio, tmp_path: Path) -> None:
    origin, first, _ = trio
    data = blob(5000, 6)
    digest = hashlib.sha256(data).hexdigest()
    private = Layer(digest, len(data), f"nodes/52:54:00:12:34:56/layers/{digest}")   # e.g. a per-node layer
    origin.blobs[digest] = data
    first.blobs[digest] = data
    sources = Sources(origin.url, (first.url,), "listed")
    assert not mirrorable(private) and sources.for_layer(private) == [origin.url]
    fetch_layers(origin.url, "tok", (private,), str(tmp_path), timeout=5, sources=sources)
    assert first.requests == [] and len(origin.requests) == 1


def test_latency_order_puts_the_nearest_first_and_marks_the_unreachable_down() -> None:
    measured = {"http://far": 0.004, "http://near": 0.0003, "http://gone": None, "http://mid": 0.001}
    sources = Sources("http://origin", tuple(measured), "latency")
    sources.rank(probe=lambda url: measured[url])
    layer = Layer("a" * 64, 1, "objects/" + "a" * 64)
    assert sources.for_layer(layer) == ["http://near", "http://mid", "http://far", "http://origin"]
    assert sources.down == {"http://gone": "unreachable"}
    assert sources.describe() == ("mirrors (latency): http://near (0.3 ms), http://mid (1.0 ms), http://far "
                                  "(4.0 ms), http://gone (unreachable); then the origin http://origin")
    listed = Sources("http://origin", ("http://far", "http://near"), "listed")
    listed.rank(probe=lambda url: pytest.fail("listed order measures nothing"))
    assert listed.for_layer(layer) == ["http://far", "http://near", "http://origin"]


def test_latency_is_measured_with_real_connects(trio) -> None:
    origin, first, _ = trio
    dead = closed_port_url()
    sources = Sources(origin.url, (dead, first.url), "latency")
    sources.rank()
    assert sources.mirrors[0] == first.url and sources.latency[first.url] < 0.5
    assert sources.down == {dead: "unreachable"}


def test_signed_mirror_fields_round_trip_and_bad_ones_are_refused() -> None:
    layer = {"digest": "b" * 64, "size": 3, "path": "objects/" + "b" * 64}
    manifest = Manifest(profile="web", generation=2, serial=5, created="now", layers=(Artifact(**layer),),
                        mirrors=("http://10.1.0.2:8080/", "http://mirror-b"), mirror_order="listed")
    payload = json.loads(manifest.to_json())
    assert payload["mirrors"] == ["http://10.1.0.2:8080", "http://mirror-b"] and payload["mirror_order"] == "listed"
    assert Manifest.from_json(manifest.to_json()) == manifest
    parsed = parse_payload(manifest.to_json())
    assert parsed.mirrors == ("http://10.1.0.2:8080", "http://mirror-b") and parsed.mirror_order == "listed"
    plain = Manifest(profile="web", generation=2, serial=5, created="now", layers=(Artifact(**layer),))
    assert "mirror" not in plain.to_json()          # additive: no mirrors, no new fields
    assert parse_payload(plain.to_json()).mirrors == ()
    for bad, words in ((["https://x"], "invalid mirror"), (["http://a b"], "invalid mirror"), ("http://x", "not a list"),
                       (["http://x"] * 17, "at most 16"), (["http://u@x"], "invalid mirror")):
        edited = dict(payload, mirrors=bad)
        with pytest.raises(VerifyError, match=words):
            parse_payload(json.dumps(edited))
    with pytest.raises(VerifyError, match="mirror_order"):
        parse_payload(json.dumps(dict(payload, mirror_order="random")))
    with pytest.raises(ManifestError, match="must be an http:// URL"):
        Manifest(profile="web", generation=2, serial=5, created="now", layers=(Artifact(**layer),),
                 mirrors=("ftp://x",))


def test_policy_per_profile_settings_round_trip_and_the_kernel_switch(tmp_path: Path) -> None:
    config_file = tmp_path / "layerboot.toml"
    config_file.write_text('[mirrors]\nurls = ["http://a/", "http://b:8080"]\norder = "listed"\n'
                           '[mirrors.profiles]\ndb = []\nlab = ["http://c"]\n')
    config = load_config(config_file)
    policy = MirrorPolicy.from_config(config)
    assert policy.for_profile("web") == ("http://a", "http://b:8080") and policy.order == "listed"
    assert policy.for_profile("db") == () and policy.for_profile("lab") == ("http://c",)
    again = tmp_path / "again.toml"
    again.write_text(config_as_toml(config))
    assert load_config(again) == config
    for text, words in (('[mirrors.profiles]\n"Bad Name" = []\n', "mirrors.profiles.Bad Name: invalid profile"),
                        ('[mirrors]\nurls = ["http://a", "http://a/"]\n', "mirrors.urls: a mirror is listed twice"),
                        ('[mirrors]\norder = "random"\n', "mirrors.order: expected one of latency, listed")):
        config_file.write_text(text)
        with pytest.raises(LayerbootError, match=re.escape(words)):
            load_config(config_file)
    assert parse_cmdline("layerboot.server=http://s layerboot.profile=p").mirrors == "on"
    assert parse_cmdline("layerboot.server=http://s layerboot.profile=p layerboot.mirrors=off").mirrors == "off"
    with pytest.raises(CmdlineError, match="layerboot.mirrors='maybe': use one of on, off"):
        parse_cmdline("layerboot.mirrors=maybe")
