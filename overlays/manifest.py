"""Signed manifests: what one profile generation boots, and the serial + signature stage1 trusts.

On disk and on the wire a manifest is a JSON envelope::

    {"format": "layerboot-signed/1", "key_id": "...", "signature": "<base64>", "payload": "<manifest JSON>"}

The signature covers the exact UTF-8 bytes of ``payload``, so no canonical re-serialisation is needed to verify.

The payload may name mirrors (``mirrors``, ``mirror_order``; overlays/mirrors.py), left out when there are none.

The signed payload says what it is for: ``profile`` always, ``node`` (a MAC) for a manifest made for one node
only (null: every node of the profile). Whoever verifies one also checks it is the one asked for
(:func:`check_binding`): a man in the middle cannot hand a node another profile's or another node's manifest,
however new and validly signed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from layerboot import strictjson
from layerboot.errors import LayerbootError
from layerboot.overlays.keys import key_id, public_raw, verify_signature
from layerboot.overlays.mirrors import ORDERS, parse_urls
from layerboot.overlays.names import check_digest, check_node_name, check_profile_name
from layerboot.overlays.verity import VerityTree

MANIFEST_FORMAT = "layerboot-manifest/1"
ENVELOPE_FORMAT = "layerboot-signed/1"


class ManifestError(LayerbootError):
    pass


def object_url_path(digest: str) -> str:
    """Where the server publishes an object, relative to its base URL."""
    return f"objects/{check_digest(digest)}"


@dataclass(frozen=True)
class Artifact:
    """A file the node fetches: its sha256, its size and its path on the server.

    ``fsverity`` (optional, layers only) is the file's fs-verity digest (overlays/verity.py): a node's cache
    checks a cached layer against it in O(1) instead of re-hashing it (initrd/stage1/cache.py). It is left out
    of the JSON when absent, so manifests without it read exactly as before. ``verity`` (optional, layers only)
    names the layer's dm-verity hash tree and root hash; in the JSON it also carries ``tree_path``, where the
    tree object is served (initrd/stage1/stream.py streams a layer with it, docs/stage1.md).
    """

    digest: str
    size: int
    path: str
    fsverity: str | None = None
    verity: VerityTree | None = None

    @classmethod
    def for_object(cls, digest: str, size: int, fsverity: str | None = None,
                   verity: VerityTree | None = None) -> "Artifact":
        return cls(digest=digest, size=size, path=object_url_path(digest), fsverity=fsverity, verity=verity)

    @classmethod
    def from_dict(cls, value: Any) -> "Artifact":
        if not isinstance(value, dict):
            raise ManifestError("a manifest artifact is not a JSON object")
        data = dict(value)
        verity = data.pop("verity", None)
        if verity is not None:
            if not isinstance(verity, dict):
                raise ManifestError("a layer's verity entry is not a JSON object")
            verity = dict(verity)
            path = verity.pop("tree_path", None)
            tree = VerityTree.from_dict(verity)
            if path != object_url_path(tree.tree):
                raise ManifestError(f"the dm-verity tree of {str(data.get('digest'))[:12]} has the path {path!r}, "
                                    f"not {object_url_path(tree.tree)!r}")
            data["verity"] = tree
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.fsverity is None:
            del data["fsverity"]
        if self.verity is None:
            del data["verity"]
        else:
            data["verity"]["tree_path"] = object_url_path(self.verity.tree)
        return data

    def __post_init__(self) -> None:
        check_digest(self.digest)
        if self.fsverity is not None:
            check_digest(self.fsverity)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ManifestError(f"artifact {self.digest[:12]} has an invalid size {self.size!r}")
        if not isinstance(self.path, str) or self.path.startswith("/") or ".." in self.path.split("/"):
            raise ManifestError(f"artifact path {self.path!r} must be relative and stay on the server")


@dataclass(frozen=True)
class Manifest:
    profile: str
    generation: int
    serial: int
    created: str
    layers: tuple[Artifact, ...]          # base first
    cmdline: str = ""
    kernel: Artifact | None = None
    initrd: Artifact | None = None
    node: str | None = None               # the one node (MAC) this manifest is for; None: any node of the profile
    mirrors: tuple[str, ...] = ()         # HTTP caches that may serve the layers (overlays/mirrors.py), in order
    mirror_order: str = "latency"         # how stage1 orders them: "latency" (nearest first) or "listed"
    format: str = field(default=MANIFEST_FORMAT)

    def __post_init__(self) -> None:
        check_profile_name(self.profile)
        if self.node is not None:
            check_node_name(self.node)
        if not self.layers:
            raise ManifestError("a manifest needs at least a base layer")
        for number in (self.generation, self.serial):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ManifestError(f"generation and serial must be positive integers, got {number!r}")
        if not isinstance(self.created, str) or not isinstance(self.cmdline, str):
            raise ManifestError("a manifest's 'created' and 'cmdline' must be strings")
        try:
            object.__setattr__(self, "mirrors", parse_urls(list(self.mirrors)))
        except (TypeError, ValueError) as err:
            raise ManifestError(f"a manifest's 'mirrors': {err}") from None
        if self.mirror_order not in ORDERS:
            raise ManifestError(f"a manifest's 'mirror_order' must be one of {', '.join(ORDERS)}")

    def to_json(self) -> str:
        data = asdict(self)
        data["layers"] = [artifact.as_dict() for artifact in self.layers]
        for name in ("kernel", "initrd"):
            artifact = getattr(self, name)
            data[name] = None if artifact is None else artifact.as_dict()
        if self.mirrors:      # additive: a manifest without mirrors reads exactly as before they existed
            data["mirrors"] = list(self.mirrors)
        else:
            del data["mirrors"], data["mirror_order"]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a {MANIFEST_FORMAT} manifest")
        try:
            def artifact(value: Any) -> Artifact | None:
                return None if value is None else Artifact.from_dict(value)

            return cls(
                profile=data["profile"], generation=data["generation"], serial=data["serial"],
                created=data["created"], cmdline=data.get("cmdline", ""),
                layers=tuple(Artifact.from_dict(item) for item in data["layers"]),
                kernel=artifact(data.get("kernel")), initrd=artifact(data.get("initrd")), node=data.get("node"),
                mirrors=tuple(data.get("mirrors") or ()), mirror_order=data.get("mirror_order", "latency"),
            )
        except (KeyError, TypeError) as err:
            raise ManifestError(f"malformed manifest: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            return cls.from_dict(strictjson.loads(text, what="manifest"))
        except strictjson.JSONError as err:
            raise ManifestError(err.message) from None


def sign_manifest(manifest: Manifest, private_key: Any) -> bytes:
    """Return the signed envelope bytes for a manifest."""
    payload = manifest.to_json()
    signature = private_key.sign(payload.encode("utf-8"))
    envelope = {
        "format": ENVELOPE_FORMAT,
        "key_id": key_id(public_raw(private_key.public_key())),
        "signature": base64.b64encode(signature).decode("ascii"),
        "payload": payload,
    }
    return (json.dumps(envelope, indent=1, sort_keys=True) + "\n").encode("utf-8")


def check_binding(manifest: Manifest, *, profile: str | None = None, node: str | None = None) -> Manifest:
    """``manifest`` if it is for ``profile`` (when given) and for ``node`` (when given and the manifest names
    one); ManifestError otherwise."""
    if profile is not None and manifest.profile != profile:
        raise ManifestError(f"the signed manifest is for profile {manifest.profile}, not {profile}: refusing "
                            "another profile's manifest")
    if node is not None and manifest.node is not None and manifest.node != node.lower():
        raise ManifestError(f"the signed manifest is for node {manifest.node}, not {node.lower()}: refusing "
                            "another node's manifest")
    return manifest


def verify_manifest(data: bytes, public_key: bytes, *, min_serial: int = 0, profile: str | None = None,
                    node: str | None = None) -> Manifest:
    """Check the envelope's signature with ``public_key`` and return the manifest it carries.

    Refuses a serial lower than ``min_serial`` (anti-replay: a node never goes back to an older manifest), and
    a manifest for another ``profile`` or ``node`` than the ones given (:func:`check_binding`).
    """
    try:
        envelope = strictjson.loads(data, what="signed manifest")
    except strictjson.JSONError as err:
        raise ManifestError(err.message) from None
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
        raise ManifestError(f"not a {ENVELOPE_FORMAT} envelope")
    payload, signature_b64 = envelope.get("payload"), envelope.get("signature")
    if not isinstance(payload, str) or not isinstance(signature_b64, str):
        raise ManifestError("signed manifest lacks a payload or signature")
    if envelope.get("key_id") != key_id(public_key):
        raise ManifestError(f"manifest was signed by key {envelope.get('key_id')!r}, "
                            f"not the trusted key {key_id(public_key)}")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        raise ManifestError("manifest signature is not valid base64") from None
    if not verify_signature(public_key, signature, payload.encode("utf-8")):
        raise ManifestError("manifest signature does not verify: it was altered or signed by another key")
    manifest = Manifest.from_json(payload)
    check_binding(manifest, profile=profile, node=node)
    if manifest.serial < min_serial:
        raise ManifestError(f"manifest serial {manifest.serial} is lower than the last accepted {min_serial} "
                            "(replay of an older manifest?)")
    return manifest
