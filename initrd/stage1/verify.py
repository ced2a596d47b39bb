"""Check a signed manifest (the envelope of layerboot.overlays.manifest) with the key baked into the initrd.

Stdlib only: the envelope is JSON, the key file one line of base64 (raw 32 bytes), the signature Ed25519
over the exact UTF-8 bytes of ``payload``. A serial lower than the last accepted one is refused, and so is a
manifest of another profile than ``layerboot.profile=`` or one made for another node (:func:`check_binding`),
wherever it comes from: the server, the cache or a disk slot.
"""

from __future__ import annotations

import binascii
import os

from .ed25519 import verify
from .jsonlite import loads
from .record import Record

try:
    from _sha256 import sha256
except ImportError:  # pragma: no cover - other builds
    from hashlib import sha256

ENVELOPE_FORMAT = "layerboot-signed/1"
MANIFEST_FORMAT = "layerboot-manifest/1"
VERITY_BLOCK = 4096
# The only dm-verity parameters stage1 uses (what the server makes). A tree made with others is not used (the
# layer is then fetched whole), so a newer server's manifest still boots an older initrd.
VERITY_PARAMETERS = {"algorithm": "sha256", "data_block": VERITY_BLOCK, "hash_block": VERITY_BLOCK, "salt": "",
                     "format": 1}
_HEX = frozenset("0123456789abcdef")


class VerifyError(Exception):
    pass


class Verity(Record):
    """A layer's dm-verity hash tree (overlays/verity.py): sha256, 4096-byte blocks, no salt, format 1, no
    superblock. The tree object is ``tree_size`` bytes at ``tree_path``; dm-verity checks reads against ``root``."""
    root: str
    tree: str
    tree_size: int
    tree_path: str

    def data_blocks(self, size: int) -> int:
        return -(-size // VERITY_BLOCK)


class Layer(Record):
    digest: str
    size: int
    path: str
    fsverity: str = ""          # the layer's fs-verity SHA-256 digest, when the manifest names it (cache.py)
    verity: Verity | None = None   # its dm-verity tree, when the manifest names one (stream.py)


class BootManifest(Record):
    profile: str
    generation: int
    serial: int
    layers: tuple[Layer, ...]   # base first
    cmdline: str = ""
    node: str = ""              # the one node (MAC) it was made for; "" for every node of the profile
    mirrors: tuple[str, ...] = ()   # base URLs of HTTP caches that may serve the layers (sources.py)
    mirror_order: str = "listed"    # "listed": in the signed order; "latency": nearest first


def key_id(public: bytes) -> str:
    return sha256(public).hexdigest()[:16]


def load_public_key(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except OSError as err:
        raise VerifyError(f"cannot read the trusted public key {path}: {err.strerror}") from None
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise VerifyError(f"{path} is not a base64 Ed25519 public key")
    return raw


def check_digest(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise VerifyError(f"manifest names an invalid sha256 digest {value!r}")
    return value


def _size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VerifyError(f"{what} has an invalid size {value!r}")
    return value


def _path(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/") \
            or "?" in value:
        raise VerifyError(f"{what} has an unsafe path {value!r}")
    return value


def _verity(item: object, digest: str) -> Verity | None:
    what = f"the dm-verity tree of layer {digest[:12]}"
    if not isinstance(item, dict):
        raise VerifyError(f"{what} is not an object")
    if any(item.get(key, wanted) != wanted for key, wanted in VERITY_PARAMETERS.items()):
        return None
    root, tree = item.get("root"), item.get("tree")
    for value in (root, tree):
        if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
            raise VerifyError(f"{what} names an invalid hash {value!r}")
    size = _size(item.get("tree_size"), what)
    if size % VERITY_BLOCK:
        raise VerifyError(f"{what} has a size of {size} bytes, not whole {VERITY_BLOCK}-byte blocks")
    return Verity(root, tree, size, _path(item.get("tree_path"), what))


def _layer(item: object) -> Layer:
    if not isinstance(item, dict):
        raise VerifyError("manifest layer entry is not an object")
    digest = check_digest(item.get("digest"))
    size = _size(item.get("size"), f"layer {digest[:12]}")
    path = _path(item.get("path"), f"layer {digest[:12]}")
    fsverity = item.get("fsverity")
    if fsverity is not None and (not isinstance(fsverity, str) or len(fsverity) != 64
                                 or not _HEX.issuperset(fsverity)):
        raise VerifyError(f"layer {digest[:12]} has an invalid fs-verity digest {fsverity!r}")
    verity = item.get("verity")
    return Layer(digest, size, path, fsverity or "", None if verity is None else _verity(verity, digest))


MAX_MIRRORS = 16
MIRROR_ORDERS = ("listed", "latency")


def _mirrors(data: dict) -> tuple[tuple[str, ...], str]:
    """The optional ``mirrors`` list (http:// base URLs) and ``mirror_order`` of a payload."""
    mirrors, order = data.get("mirrors") or [], data.get("mirror_order") or "listed"
    if not isinstance(mirrors, list) or len(mirrors) > MAX_MIRRORS:
        raise VerifyError(f"manifest 'mirrors' is not a list of at most {MAX_MIRRORS} base URLs")
    for url in mirrors:
        if not isinstance(url, str) or not url.startswith("http://") or len(url) > 256 or not url.isprintable() \
                or " " in url or "?" in url or "#" in url or "@" in url or len(url) <= len("http://"):
            raise VerifyError(f"manifest names an invalid mirror {str(url)[:80]!r} (an http:// base URL)")
    if order not in MIRROR_ORDERS:
        raise VerifyError(f"manifest 'mirror_order' {str(order)[:20]!r} is not one of {', '.join(MIRROR_ORDERS)}")
    return tuple(url.rstrip("/") for url in mirrors), order


def parse_payload(payload: str) -> BootManifest:
    try:
        data = loads(payload)
    except ValueError:
        raise VerifyError("manifest payload is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise VerifyError(f"manifest payload is not a {MANIFEST_FORMAT} document")
    generation, serial = data.get("generation"), data.get("serial")
    for number in (generation, serial):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise VerifyError(f"manifest generation/serial {number!r} is not a positive integer")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise VerifyError("manifest lists no layers")
    profile, cmdline, node = data.get("profile"), data.get("cmdline", ""), data.get("node") or ""
    if not isinstance(profile, str) or not isinstance(cmdline, str) or not isinstance(node, str):
        raise VerifyError("manifest profile/cmdline/node are not strings")
    mirrors, order = _mirrors(data)
    return BootManifest(profile, generation, serial, tuple(_layer(item) for item in layers), cmdline, node.lower(),
                        mirrors, order)


def check_binding(manifest: BootManifest, profile: str, node: str, source: str = "the manifest") -> BootManifest:
    """``manifest`` if it is for ``profile`` (when one is expected) and not made for a node other than ``node``.

    ``source`` names where it came from for the error ("the cached manifest", ...).
    """
    if profile and manifest.profile != profile:
        raise VerifyError(f"{source} is for profile {manifest.profile}, but this boot is for profile {profile} "
                          "(layerboot.profile=): refusing another profile's manifest")
    if manifest.node and node and manifest.node != node.lower():
        raise VerifyError(f"{source} was made for node {manifest.node}, not for this node {node.lower()}: "
                          "refusing another node's manifest")
    return manifest


def verify_envelope(data: bytes, public: bytes, *, min_serial: int = 0, profile: str = "", node: str = "",
                    source: str = "the manifest") -> BootManifest:
    """Return the manifest inside a signed envelope, or raise VerifyError naming what is wrong (a bad
    signature, another profile or node than expected, a serial below ``min_serial``)."""
    try:
        envelope = loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise VerifyError("signed manifest is not valid JSON") from None
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
        raise VerifyError(f"not a {ENVELOPE_FORMAT} envelope")
    payload, signature_b64 = envelope.get("payload"), envelope.get("signature")
    if not isinstance(payload, str) or not isinstance(signature_b64, str):
        raise VerifyError("signed manifest lacks a payload or signature")
    if envelope.get("key_id") != key_id(public):
        raise VerifyError(f"manifest was signed by key {envelope.get('key_id')!r}, "
                          f"not the trusted key {key_id(public)}")
    try:
        signature = binascii.a2b_base64(signature_b64.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise VerifyError("manifest signature is not valid base64") from None
    if not verify(public, payload.encode("utf-8"), signature):
        raise VerifyError("manifest signature does not verify: it was altered or signed by another key")
    manifest = check_binding(parse_payload(payload), profile, node, source)
    if manifest.serial < min_serial:
        raise VerifyError(f"manifest serial {manifest.serial} is lower than the last accepted {min_serial} "
                          "(replay of an older manifest?)")
    return manifest


class SerialCache:
    """The last accepted manifest serial, kept in ``directory/last-serial`` (a persistent cache disk)."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "last-serial")

    def load(self) -> int:
        try:
            with open(self.path, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            raise VerifyError(f"serial cache {self.path} is unreadable ({err}); refusing to guess") from None

    def store(self, serial: int) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{serial}\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
