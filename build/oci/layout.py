"""Reading an OCI image: normalised into a local layout by skopeo, then its manifest, config and layer blobs.

skopeo takes whatever the admin has (an OCI archive ``image.tar``, an OCI layout directory, with or without a
reference name) and writes one image into a layout of ours under the tag :data:`TAG`, verifying blob digests
as it copies (no registry is contacted: both ends are local). What we then read is checked again: the
manifest's and every layer's sha256 must match their names, and only the media types below are accepted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from layerboot.errors import LayerbootError
from layerboot.progress import Progress
from layerboot.run import Process, require_tool, run

TAG = "layerboot-import"
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,254}$")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    digest: str            # hex, without "sha256:"
    media_type: str
    size: int
    path: Path

    @property
    def short(self) -> str:
        return self.digest[:12]

    @property
    def compression(self) -> str:
        return LAYER_COMPRESSION[self.media_type]


@dataclass(frozen=True)
class Image:
    layout: Path
    source: str            # what the admin named
    layers: tuple[Blob, ...]   # base first
    config: dict[str, Any]

    @property
    def created(self) -> int:
        """The image's creation time in seconds (0 when the config has none)."""
        import datetime as dt
        try:
            return int(dt.datetime.fromisoformat(str(self.config.get("created", "")).replace("Z", "+00:00"))
                       .timestamp())
        except ValueError:
            return 0

    @property
    def description(self) -> str:
        created = self.config.get("created", "")
        return f"OCI {self.source}" + (f" ({created[:10]})" if created else "")


def source_reference(source: Path, ref: str | None) -> str:
    """skopeo's name for what the admin gave: ``oci:DIR[:REF]`` or ``oci-archive:FILE[:REF]``."""
    if ref is not None and not REF_RE.match(ref):
        raise LayerbootError(f"--ref {ref!r} is not an image reference name")
    suffix = f":{ref}" if ref else ""
    if source.is_dir():
        if not (source / "oci-layout").is_file() or not (source / "index.json").is_file():
            raise LayerbootError(f"{source} is not an OCI image layout (no oci-layout and index.json)",
                                 hint="give an OCI layout directory or an OCI archive (.tar)")
        return f"oci:{source.resolve()}{suffix}"
    if source.is_file():
        return f"oci-archive:{source.resolve()}{suffix}"
    raise LayerbootError(f"{source} does not exist")


def normalise(source: Path, ref: str | None, target: Path, *, gzip_layers: bool = False) -> Path:
    """Copy the image into a fresh layout at ``target`` (tag :data:`TAG`) with skopeo; returns the layout.

    ``gzip_layers`` recompresses every layer with gzip (umoci 0.4.7, Debian 12's, reads no zstd layers)."""
    skopeo = require_tool("skopeo")
    name = source_reference(source, ref)
    recompress = ["--dest-compress", "--dest-compress-format", "gzip"] if gzip_layers else []
    with Progress(f"copying {source.name} with skopeo") as step:
        result = run([skopeo, "--insecure-policy", "copy", "--quiet", *recompress, name, f"oci:{target}:{TAG}"],
                     check=False, timeout=3600, lines=step.line)
    if result.returncode != 0:
        reason = skopeo_reason(result.stderr.decode("utf-8", "replace"))
        if "Digest did not match" in reason or "digest" in reason.lower() and "match" in reason:
            raise LayerbootError(f"{source}: a blob does not match its digest ({reason[:200]})",
                                 hint="the image is damaged: copy or download it again")
        hint = "an OCI archive (skopeo copy docker-archive:in.tar oci-archive:out.tar converts docker save output)"
        if "more than one" in reason or "multiple" in reason:
            hint = "the archive holds several images: pick one with --ref NAME"
        raise LayerbootError(f"{source} is not an OCI image skopeo can read: {reason[:300]}", hint=hint)
    return target


def skopeo_reason(stderr: str) -> str:
    """The message of skopeo's last log line (``time=... level=fatal msg="..."``), or the line itself."""
    last = (stderr.strip().splitlines() or ["no reason given"])[-1]
    match = re.search(r'msg="((?:[^"\\]|\\.)*)"', last)
    return match.group(1).replace('\\"', '"') if match else last


def _json_blob(layout: Path, digest: str, what: str) -> dict[str, Any]:
    blob = _blob_path(layout, digest, what)
    data = blob.read_bytes()
    if hashlib.sha256(data).hexdigest() != blob.name:
        raise LayerbootError(f"the image's {what} {blob.name[:12]} does not match its digest")
    try:
        value = json.loads(data)
    except json.JSONDecodeError as err:
        raise LayerbootError(f"the image's {what} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise LayerbootError(f"the image's {what} is not a JSON object")
    return value


def _blob_path(layout: Path, digest: Any, what: str) -> Path:
    match = DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if not match:
        raise LayerbootError(f"the image's {what} has an unsupported digest {str(digest)[:80]!r} (sha256 only)")
    path = layout / "blobs" / "sha256" / match.group(1)
    if not path.is_file():
        raise LayerbootError(f"the image's {what} {match.group(1)[:12]} is missing from the layout")
    return path


def read_image(layout: Path, source: str) -> Image:
    """The image tagged :data:`TAG` in ``layout``: its layers (base first) and config, digests checked."""
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    entries = [m for m in index.get("manifests", [])
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG]
    if len(entries) != 1:
        raise LayerbootError(f"{layout}: expected one image tagged {TAG}, found {len(entries)}")
    manifest = _json_blob(layout, entries[0].get("digest"), "manifest")
    if manifest.get("mediaType", entries[0].get("mediaType")) not in MANIFEST_TYPES:
        raise LayerbootError(f"unsupported manifest type {manifest.get('mediaType')!r}")
    config = _json_blob(layout, manifest.get("config", {}).get("digest"), "config")
    if config.get("os", "linux") != "linux":
        raise LayerbootError(f"the image is for {config.get('os')!r}, not linux")
    layers = []
    for number, entry in enumerate(manifest.get("layers", []), 1):
        media_type = entry.get("mediaType", "")
        if media_type not in LAYER_COMPRESSION:
            raise LayerbootError(f"layer {number} has an unsupported media type {media_type!r}",
                                 hint="supported: tar, tar+gzip, tar+zstd layers")
        path = _blob_path(layout, entry.get("digest"), f"layer {number}")
        layers.append(Blob(path.name, media_type, int(entry.get("size", path.stat().st_size)), path))
    if not layers:
        raise LayerbootError(f"{source} has no layers")
    return Image(layout, source, tuple(layers), config)


class _Hashing:
    """A blob being read: counts progress and checks the sha256 when the end is reached."""

    def __init__(self, blob: Blob, step: Progress) -> None:
        self.blob = blob
        self.step = step
        self.handle = open(blob.path, "rb")
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size if size > 0 else CHUNK)
        if data:
            self.hash.update(data)
            self.step.advance(len(data))
        elif self.hash.hexdigest() != self.blob.digest:
            raise LayerbootError(f"layer blob {self.blob.short} does not match its digest (damaged image?)")
        return data

    def close(self) -> None:
        self.handle.close()


@contextmanager
def layer_tar(blob: Blob, step: Progress) -> Iterator[IO[bytes]]:
    """The uncompressed tar stream of a layer blob (gzip in-process, zstd through ``zstd -d``); once the
    consumer is done, the rest of the blob is read so its sha256 is checked."""
    raw = _Hashing(blob, step)
    try:
        if blob.compression == "gzip":
            import gzip
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:  # type: ignore[arg-type]
                yield unzipped  # type: ignore[misc]
        elif blob.compression == "zstd":
            require_tool("zstd")
            with Process(["zstd", "-d", "-c", "-q", "--no-progress", blob.path]) as unzstd:
                assert unzstd.stdout is not None
                yield unzstd.stdout
                if unzstd.wait(timeout=60) != 0:
                    raise LayerbootError(f"layer blob {blob.short} is not valid zstd data")
        else:
            yield raw  # type: ignore[misc]
        while raw.read(CHUNK):
            pass
    finally:
        raw.close()
