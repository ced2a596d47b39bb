"""``POST /nodes/{mac}/secret``: a diskless node claims its node secret at boot.

The request carries the node's boot token (``Authorization: Bearer``) and, in a JSON body, ``proof``: the hex
HMAC-SHA256 of ``"layerboot-claim/1\\n" + boot token``, keyed with the node's asset key, which stage1 reads as
root from DMI (``product_uuid:product_serial`` in /sys/class/dmi/id, both mode 0400). The raw key never crosses
the wire, and an unprivileged user on the node can read neither the key nor the secret.

* a node with an asset key (``layerboot nodes register/set --asset-key``) gets a secret only with the right
  proof (403 otherwise);
* a node without one gets none (403), unless ``server.node_secret_claim = "mac"``: then the boot token alone is
  enough, i.e. the boot network is trusted (labs);
* at most ``server.node_secret_claims_per_hour`` claims per node (429 + Retry-After), and a full disk is a 503:
  stage1 treats every refusal as "boot read-only", never as a failed boot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

from aiohttp import web

from layerboot.errors import LayerbootError
from layerboot.server.auth.access import BOOT, for_node
from layerboot.server.auth.nodesecret import ClaimRefused
from layerboot.server.nodes import AuthError

log = logging.getLogger("layerboot.server.auth")

CLAIM_CONTEXT = b"layerboot-claim/1\n"
MAX_BODY = 4096


def claim_proof(asset_key: str, token: str) -> str:
    """What stage1 sends (initrd/stage1/claim.py computes the same with its own HMAC)."""
    return hmac.new(asset_key.encode("utf-8"), CLAIM_CONTEXT + token.encode("ascii"), hashlib.sha256).hexdigest()


async def _proof(request: web.Request) -> str:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise LayerbootError(f"a claim body is at most {MAX_BODY} bytes")
    if not raw.strip():
        return ""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LayerbootError("a claim body is a JSON object {\"proof\": HEX}") from None
    proof = data.get("proof", "") if isinstance(data, dict) else None
    if not isinstance(proof, str) or len(proof) > 128:
        raise LayerbootError("claim 'proof' must be a hex string")
    return proof


async def handle_claim(request: web.Request) -> web.StreamResponse:
    from layerboot.server.http import NO_STORE, STATE, path_mac

    state = request.app[STATE]
    mac = path_mac(request)
    caller = for_node(state, request, mac, "claiming a node secret")
    if caller.kind != BOOT:
        raise AuthError("a node secret is claimed with the node's boot token (from its iPXE script)", status=403)
    node = caller.node
    assert node is not None
    if not node.created:
        raise AuthError(f"node {mac} boots the default profile without being registered: it gets no secret",
                        status=403, hint=f"layerboot nodes register {mac} --profile P --asset-key UUID:SERIAL")
    proof = await _proof(request)
    token = request.headers["Authorization"].partition(" ")[2].strip()
    if node.asset_key:
        if not proof or not hmac.compare_digest(claim_proof(node.asset_key, token), proof.lower()):
            log.warning("node %s: secret claim refused: the asset key proof does not match", mac)
            raise AuthError(f"the asset key proof of {mac} does not match its registered asset key", status=403,
                            hint="compare 'layerboot asset-key' on the node (as root) with 'layerboot nodes show'")
        how = "asset key"
    elif state.config.server_node_secret_claim == "mac":
        how = "MAC only (server.node_secret_claim = mac)"
    else:
        raise AuthError(f"node {mac} has no asset key, so it cannot claim a secret", status=403,
                        hint=f"layerboot nodes set {mac} --asset-key UUID:SERIAL, or trust the boot network with "
                             "server.node_secret_claim = \"mac\"")
    try:
        secret = state.secrets.claim(mac, per_hour=state.config.server_node_secret_claims_per_hour)
    except ClaimRefused as err:
        log.warning("node %s: secret claim refused: %s", mac, err.message)
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else {}
        if err.status == 429:
            raise web.HTTPTooManyRequests(text=err.message, headers=headers) from None
        raise web.HTTPServiceUnavailable(text=err.message, headers=headers) from None
    log.info("node %s claimed a node secret (%s)", mac, how)
    return web.json_response({"node": mac, "secret": secret}, status=201, headers=NO_STORE)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/nodes/{mac}/secret", handle_claim)
