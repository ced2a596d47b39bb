"""A slot's content fetched from layerbootd, for a node that updates its own disk (``ab update --server``).

The node asks for its manifest (``GET /nodes/<mac>/manifest`` with its node secret), verifies the signature
with the public key it trusts, refuses a manifest of another profile than the one it expects (or one made for
another node) and a serial lower than the newest one already on its disk (anti-replay across reboots). Each
object the new slot needs (the layers, their dm-verity trees, kernel and initrd) is taken from a slot already on
the disk when it is there with the right hash (an update that adds one layer downloads one layer and its tree),
otherwise downloaded (a tree from ``tree_path``, served to exactly the nodes that may fetch its layer) and
hashed. Nothing unverified ever reaches the slot writer.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from layerboot.build.ab import AbDisk, SlotSource, expected_files
from layerboot.build.bootloader import SLOTS
from layerboot.errors import LayerbootError
from layerboot.urls import parse_http_url
from layerboot.overlays.manifest import object_url_path, verify_manifest
from layerboot.overlays.objects import sha256_file

CHUNK = 1 << 20
TIMEOUT = 60.0


@dataclass
class FetchStats:
    downloaded: int = 0          # objects
    downloaded_bytes: int = 0
    reused: int = 0              # objects copied from a slot already on the disk
    reused_bytes: int = 0


def _get(server: str, path: str, secret: str, sink=None) -> bytes:  # noqa: ANN001 - sink: binary file
    """GET ``path``; the body is returned, or streamed into ``sink`` (then b"" is returned)."""
    url = parse_http_url(server)
    if url.scheme != "http":
        raise LayerbootError(f"server URL {server!r} must look like http://HOST:PORT")
    conn = http.client.HTTPConnection(url.host, url.port, timeout=TIMEOUT)
    try:
        conn.request("GET", url.path.rstrip("/") + "/" + path, headers={"Authorization": f"Bearer {secret}"})
        response = conn.getresponse()
        if response.status != 200:
            reason = response.read(300).decode("utf-8", "replace").strip()
            raise LayerbootError(f"GET {path} refused by {server}: {response.status} {reason or response.reason}")
        if sink is None:
            return response.read()
        while chunk := response.read(CHUNK):
            sink.write(chunk)
        return b""
    except (OSError, http.client.HTTPException) as err:
        raise LayerbootError(f"cannot fetch {path} from {server}: {err}") from None
    finally:
        conn.close()


def source_from_server(disk: AbDisk, server: str, mac: str, secret: str, public_key: bytes, workdir: Path,
                       *, target: str, profile: str | None = None) -> tuple[SlotSource, FetchStats]:
    """Everything slot ``target`` needs, verified, in ``workdir``; objects found in the other slot are reused.

    The manifest must be for ``profile``; without one, for the profile of the newest slot on the disk.
    """
    try:
        state = disk.state()
        live = [s for s in SLOTS if s != target and state.slots[s].state in ("good", "trial")]
    except LayerbootError:               # a disk not installed yet: everything is downloaded
        live = []
    records = [r for r in (disk.read_record(s) for s in live) if r]
    newest = max((r.serial for r in records), default=0)
    expected = profile
    if expected is None and records:
        expected = max(records, key=lambda r: r.serial).profile
    if expected is None:
        raise LayerbootError("which profile should this disk boot? Nothing is installed yet",
                             hint="give --profile NAME: a manifest of another profile is refused")
    envelope = _get(server, f"nodes/{urllib.parse.quote(mac)}/manifest", secret)
    manifest = verify_manifest(envelope, public_key, min_serial=newest, profile=expected, node=mac)
    if manifest.kernel is None or manifest.initrd is None:
        raise LayerbootError(f"the manifest of {mac} names no kernel or initrd to boot from disk")
    # digest -> (size, path on the server): the layers, kernel, initrd and the layers' dm-verity trees
    objects = {a.digest: (a.size, a.path) for a in (*manifest.layers, manifest.kernel, manifest.initrd)}
    objects.update({a.verity.tree: (a.verity.tree_size, object_url_path(a.verity.tree))
                    for a in manifest.layers if a.verity is not None})
    stats = FetchStats()
    workdir.mkdir(parents=True, exist_ok=True)
    have: dict[str, Path] = {}
    for slot in live:
        with disk.mounted(slot, writable=False) as root:
            for rel, digest in expected_files(manifest).items():
                candidates = [root / rel, root / "layers" / digest]
                found = next((p for p in candidates if p.is_file() and p.stat().st_size == objects[digest][0]),
                             None)
                if digest in have or found is None or sha256_file(found)[0] != digest:
                    continue
                shutil.copyfile(found, workdir / digest)
                have[digest] = workdir / digest
                stats.reused += 1
                stats.reused_bytes += objects[digest][0]
    for digest, (size, path) in objects.items():
        if digest in have:
            continue
        part = workdir / f"{digest}.part"
        with open(part, "wb") as sink:
            _get(server, path, secret, sink)
        if part.stat().st_size != size or sha256_file(part)[0] != digest:
            part.unlink()
            raise LayerbootError(f"object {digest[:12]} from {server} does not match the signed manifest")
        os.replace(part, workdir / digest)
        have[digest] = workdir / digest
        stats.downloaded += 1
        stats.downloaded_bytes += size
    files = {rel: have[digest] for rel, digest in expected_files(manifest).items()}
    return SlotSource(envelope, manifest, files), stats
