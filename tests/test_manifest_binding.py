"""A signed manifest is only booted for what was asked for (issue 11 item 1): its profile, and its node when it
names one. Unit checks on both verifiers (layerboot's and stage1's), the node cache, and a man in the middle
on loopback handing node A the newer, validly signed manifest of profile B, against stage1's code path and
``ab update --server``'s."""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerboot.errors import LayerbootError
from layerboot.initrd.stage1.cache import LayerCache
from layerboot.initrd.stage1.cmdline import parse_cmdline
from layerboot.initrd.stage1.main import fetch_manifest
from layerboot.initrd.stage1.verify import VerifyError, verify_envelope
from layerboot.overlays.keys import load_private_key, load_public_key
from layerboot.overlays.manifest import (Artifact, Manifest, ManifestError, check_binding, sign_manifest,
                                         verify_manifest)
from layerboot.overlays.profile import Profiles
from server_daemon import MAC, OTHER_MAC, Daemon, boot_profile, write_config


def _manifest(profile: str = "web", node: str | None = None, serial: int = 5) -> Manifest:
    return Manifest(profile=profile, generation=1, serial=serial, created="2026-01-01T00:00:00+00:00",
                    layers=(Artifact.for_object("a" * 64, 10),), node=node)


def test_the_payload_names_its_profile_and_optionally_its_node(profiles: Profiles) -> None:
    private = load_private_key(profiles.paths.signing_key)
    public = load_public_key(profiles.paths.public_key)
    for node in (None, MAC):
        envelope = sign_manifest(_manifest(node=node), private)
        assert verify_manifest(envelope, public, profile="web", node=MAC).node == node     # round trip
        boot = verify_envelope(envelope, public, profile="web", node=MAC)
        assert (boot.profile, boot.node) == ("web", node or "")
    profile_wide = sign_manifest(_manifest(), private)
    with pytest.raises(ManifestError, match="is for profile web, not db: refusing another profile's manifest"):
        verify_manifest(profile_wide, public, profile="db")
    with pytest.raises(VerifyError, match="the cached manifest is for profile web, but this boot is for profile db"):
        verify_envelope(profile_wide, public, profile="db", source="the cached manifest")
    for_other = sign_manifest(_manifest(node=OTHER_MAC), private)
    with pytest.raises(ManifestError, match=f"is for node {OTHER_MAC}, not {MAC}"):
        verify_manifest(for_other, public, profile="web", node=MAC.upper())
    with pytest.raises(VerifyError, match=f"was made for node {OTHER_MAC}, not for this node {MAC}"):
        verify_envelope(for_other, public, profile="web", node=MAC)
    assert check_binding(_manifest(node=MAC), profile="web", node=MAC).node == MAC
    with pytest.raises(LayerbootError, match="not a node MAC"):
        _manifest(node="52-54-00-12-34-56")


def test_the_node_cache_refuses_a_cached_manifest_of_another_profile(profiles: Profiles, tmp_path: Path) -> None:
    """An offline boot takes the cache's manifest: one of another profile (the node was moved) is refused."""
    private = load_private_key(profiles.paths.signing_key)
    public = load_public_key(profiles.paths.public_key)
    cache = LayerCache(str(tmp_path / "cache"))
    envelope = sign_manifest(_manifest(profile="db", serial=9), private)
    cache.accept(9, envelope)
    options = parse_cmdline("layerboot.server=http://10.0.2.2:1 layerboot.profile=web")
    data, source = fetch_manifest(options, MAC, cache, online=False)
    assert data == envelope and source == "the cached manifest"
    with pytest.raises(VerifyError, match="the cached manifest is for profile db, but this boot is for profile web"):
        verify_envelope(data, public, min_serial=cache.last_serial(), profile=options.profile, node=MAC,
                        source=source)


class ManInTheMiddle:
    """A proxy on loopback in front of layerbootd: passes everything, except that ``GET /nodes/<victim>/manifest``
    is answered with another (valid, signed, newer) manifest."""

    def __init__(self, upstream: int, victim: str, swap: bytes) -> None:
        outer = self
        self.swapped = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if urllib.parse.unquote(self.path) == f"/nodes/{victim}/manifest":
                    outer.swapped += 1
                    status, body = 200, swap
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=10)
                    conn.request("GET", self.path, headers={k: v for k, v in self.headers.items()
                                                            if k.lower() in ("authorization", "range")})
                    reply = conn.getresponse()
                    status, body = reply.status, reply.read()
                    conn.close()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mitm(profiles: Profiles, make_layer, tmp_path: Path) -> Iterator[tuple[Daemon, ManInTheMiddle, str]]:  # noqa: ANN001
    boot_profile(profiles, make_layer, tmp_path, "p1")
    boot_profile(profiles, make_layer, tmp_path, "p2")
    profiles.set_boot("p2", cmdline="console=ttyS0 newer")          # p2's manifest is the newest of all
    assert profiles.current("p2").serial > profiles.current("p1").serial
    daemon = Daemon(profiles.paths, write_config(tmp_path / "layerboot.toml", profiles.paths),
                    tmp_path / "layerbootd.log")
    _, secret = daemon.registry().register(MAC, "p1")
    daemon.start()
    proxy = ManInTheMiddle(daemon.port, MAC, profiles.signed_manifest("p2"))
    try:
        yield daemon, proxy, secret
    finally:
        proxy.close()
        daemon.stop()


def test_stage1_refuses_another_profiles_newer_manifest_from_a_man_in_the_middle(mitm, profiles: Profiles) -> None:  # noqa: ANN001
    daemon, proxy, _ = mitm
    script = daemon.get(f"/boot/{MAC}.ipxe").text           # what iPXE got: the real script, from the server
    kernel_args = next(line for line in script.splitlines() if line.startswith("kernel ")).split()[3:]
    # as iPXE expands it: the MAC of the NIC it booted from
    kernel_args = [arg.replace("${netX/mac:hexhyp}", MAC.replace(":", "-")) for arg in kernel_args]
    options = parse_cmdline(" ".join(kernel_args).replace(daemon.url, proxy.url))
    assert options.profile == "p1" and options.node == MAC
    public = load_public_key(profiles.paths.public_key)
    envelope, source = fetch_manifest(options, options.node, None)
    assert proxy.swapped == 1 and envelope == profiles.signed_manifest("p2")
    with pytest.raises(VerifyError, match="the server's manifest is for profile p2, but this boot is for profile p1"):
        verify_envelope(envelope, public, profile=options.profile, node=options.node, source=source)
    # without the proxy, the same code path boots p1
    direct = parse_cmdline(" ".join(kernel_args))
    envelope, source = fetch_manifest(direct, direct.node, None)
    assert verify_envelope(envelope, public, profile=direct.profile, node=direct.node).profile == "p1"


def test_ab_update_from_the_server_refuses_it_too(mitm, profiles: Profiles, tmp_path: Path) -> None:  # noqa: ANN001
    from layerboot.build.ab import AbDisk
    from layerboot.build.ab_fetch import source_from_server

    daemon, proxy, secret = mitm
    public = load_public_key(profiles.paths.public_key)
    disk = AbDisk(str(tmp_path / "no-such-disk"), workdir=tmp_path)     # nothing installed yet
    with pytest.raises(LayerbootError, match="the signed manifest is for profile p2, not p1"):
        source_from_server(disk, proxy.url, MAC, secret, public, tmp_path / "fetch", target="A", profile="p1")
    assert proxy.swapped == 1 and not list((tmp_path / "fetch").glob("*"))     # nothing was downloaded
    source, _ = source_from_server(disk, daemon.url, MAC, secret, public, tmp_path / "fetch", target="A",
                                   profile="p1")
    assert source.manifest.profile == "p1"
