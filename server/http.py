"""The HTTP side of layerbootd: per-MAC iPXE scripts, manifests, objects, boot reports, uploads, status.

URL contract (stage1 and the PXE set-up code against it; docs/server.md has the long form):

    GET  /boot/{mac}.ipxe                 iPXE script (kernel + initrd URLs carrying a fresh boot token)
    GET  /nodes/{mac}/manifest            signed manifest of the node's profile      (node token)
    GET  /objects/{digest}                a layer, kernel or initrd the node's profile names
                                          (node token as Bearer or ?token=; admin token: any object)
    GET  /profiles/{profile}/manifest     signed manifest                (admin, or a node of that profile)
    POST /nodes/{mac}/events              boot report JSON                           (node token)
    PUT  /nodes/{mac}/uploads/{name}.tar.zst   upload a captured layer; 202 + id  (node token)
    GET  /nodes/{mac}/uploads/{id}        state of one upload                         (node or admin)
    GET  /nodes/{mac}                     node status                                 (node or admin)
    GET  /nodes                           every node with its last report             (admin)
    GET  /status                          daemon status (public, no secrets)
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from layerboot import __version__
from layerboot.errors import LayerbootError, NotFoundError
from layerboot.overlays.names import DIGEST_RE
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.server import negotiate
from layerboot.server.nodes import AuthError, Event, Node, Registry, normalize_mac, token_hash
from layerboot.server.objects import ProfileIndex, send_object

log = logging.getLogger("layerboot.server.http")
access_log = logging.getLogger("layerboot.server.access")

HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
NO_STORE = {"Cache-Control": "no-store"}
MAX_EVENT_BYTES = 16 << 10


@dataclass
class ServerState:
    """Everything a request handler needs, built once by main()."""

    config: Any
    paths: Paths
    store: Store
    profiles: Profiles
    registry: Registry
    index: ProfileIndex
    admin_token_hash: str
    uploads: Any = None          # layerboot.server.uploads.Uploads, once started
    started: float = 0.0


STATE = web.AppKey("layerboot", ServerState)


def bearer(request: web.Request, *, query: bool = False) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise AuthError("Authorization must be 'Bearer TOKEN'")
    if query:
        return request.query.get("token") or None
    return None


def is_admin(state: ServerState, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(token_hash(token or ""), state.admin_token_hash)


def path_mac(request: web.Request) -> str:
    return normalize_mac(request.match_info["mac"])


def public_url(request: web.Request) -> str:
    """The base URL nodes use: server.public_url, else the address this request came in on."""
    configured = request.app[STATE].config.server_public_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    if not HOST_RE.match(host):
        raise LayerbootError(f"bad Host header {host!r}", hint="set server.public_url")
    return f"http://{host}"


def node_or_admin(request: web.Request, mac: str) -> Node | None:
    """The node itself (by its token) or the admin (returns None); AuthError otherwise."""
    state = request.app[STATE]
    token = bearer(request)
    if is_admin(state, token):
        return None
    return state.registry.authenticate(mac, token)


def any_node_or_admin(state: ServerState, token: str | None, missing: str) -> Node | None:
    """The node holding ``token`` whatever its MAC, or None for the admin; AuthError otherwise."""
    if is_admin(state, token):
        return None
    if not token:
        raise AuthError(missing)
    node = state.registry.node_for_token(token)
    if node is None:
        raise AuthError("unknown or expired token")
    return node


# -- iPXE --------------------------------------------------------------------------------------------------
def boot_script(base: str, mac: str, token: str, kernel: str, initrd: str, cmdline: str) -> str:
    args = " ".join(part for part in (cmdline.strip(), f"layerboot.server={base}", f"layerboot.node={mac}",
                                      f"layerboot.token={token}") if part)
    return ("#!ipxe\n"
            f"echo layerboot: booting {mac}\n"
            f"kernel {base}/objects/{kernel}?token={token} initrd=initrd {args}\n"
            f"initrd --name initrd {base}/objects/{initrd}?token={token}\n"
            "boot\n")


async def handle_boot(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    name = request.match_info["name"]
    if not name.endswith(".ipxe"):
        raise web.HTTPNotFound(text="boot scripts are /boot/MAC.ipxe")
    mac = normalize_mac(name.removesuffix(".ipxe"))
    node = state.registry.find(mac)
    if node is None:
        if state.config.server_unknown_mac != "default":
            log.warning("refused unknown MAC %s (server.unknown_mac = refuse)", mac)
            return negotiate.error(request, 403, f"node {mac} is not registered with this server",
                                   hint=f"register it: layerboot nodes register {mac} --profile PROFILE")
        profile = state.config.server_default_profile
        if not profile:
            return negotiate.error(request, 503, "unknown MACs get the default profile, but none is set",
                                   hint="set server.default_profile")
        state.profiles.current(profile)   # fail before registering anything
        node, _ = state.registry.register(mac, profile, auto=True)
        log.info("auto-registered %s with the default profile %s", mac, profile)
    gen = state.profiles.current(node.profile)
    if not gen.kernel or not gen.initrd:
        return negotiate.error(request, 409, f"profile {gen.profile} generation {gen.number} has no "
                               f"{'kernel' if not gen.kernel else 'initrd'}",
                               hint=f"layerboot profile set {gen.profile} --kernel REF --initrd REF")
    if "$" in gen.cmdline or not gen.cmdline.isprintable():
        return negotiate.error(request, 409, f"the command line of profile {gen.profile} has '$' or control "
                               "characters, which iPXE would expand or cut", hint=f"layerboot profile set "
                               f"{gen.profile} --cmdline ...")
    base = public_url(request)
    token = state.registry.issue_boot_token(mac)
    state.registry.saw_boot(mac)
    log.info("boot script for %s: profile %s generation %d", mac, gen.profile, gen.number)
    return web.Response(text=boot_script(base, mac, token, gen.kernel, gen.initrd, gen.cmdline),
                        content_type="text/plain", headers=NO_STORE)


# -- manifests and objects ---------------------------------------------------------------------------------
def manifest_response(state: ServerState, profile: str) -> web.Response:
    gen = state.profiles.current(profile)
    body = state.profiles.signed_manifest(profile, gen.number)
    return web.Response(body=body, content_type="application/json",
                        headers={**NO_STORE, "X-Layerboot-Generation": str(gen.number),
                                 "X-Layerboot-Serial": str(gen.serial)})


async def handle_node_manifest(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    node = state.registry.authenticate(path_mac(request), bearer(request))
    return manifest_response(state, node.profile)


async def handle_profile_manifest(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    profile = request.match_info["profile"]
    node = any_node_or_admin(state, bearer(request), "this needs the admin token or the token of a node of "
                             "this profile")
    if node is not None:
        if node.profile != profile:
            raise AuthError(f"node {node.mac} boots profile {node.profile}, not {profile}", status=403)
    return manifest_response(state, profile)


async def handle_object(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    digest = request.match_info["digest"]
    if not DIGEST_RE.match(digest):
        raise LayerbootError(f"{digest[:80]!r} is not a sha256 digest (64 lowercase hex characters)")
    node = any_node_or_admin(state, bearer(request, query=True),
                             "objects need a token (Authorization: Bearer TOKEN or ?token=TOKEN)")
    if node is not None:
        if not state.index.allows(node.profile, digest):
            raise AuthError(f"object {digest[:12]} is not named by any manifest of profile {node.profile}",
                            status=403)
    path = state.paths.object(digest)
    if not path.is_file():
        raise web.HTTPNotFound(text=f"object {digest[:12]} is not in the store")
    return await send_object(request, path, digest)


# -- reports and status ------------------------------------------------------------------------------------
async def handle_event(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    node = state.registry.authenticate(path_mac(request), bearer(request))
    if request.content_length is not None and request.content_length > MAX_EVENT_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_EVENT_BYTES, actual_size=request.content_length)
    raw = await request.content.read(MAX_EVENT_BYTES + 1)
    if len(raw) > MAX_EVENT_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_EVENT_BYTES, actual_size=len(raw))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LayerbootError("a boot event must be a JSON object") from None
    event = Event.from_json(data)
    state.registry.record_event(node.mac, event)
    (log.info if event.ok else log.warning)("node %s: %s %s%s", node.mac, event.stage, "ok" if event.ok else "FAILED",
                                            f": {event.message}" if event.message else "")
    return web.json_response({"recorded": True}, status=201)


def node_status(state: ServerState, mac: str) -> dict[str, Any]:
    node = state.registry.get(mac)
    data = node.to_dict()
    data["ssh_keys"] = len(state.registry.ssh_keys(mac))
    data["events"] = [e.__dict__ for e in state.registry.events(mac)]
    return data


async def handle_node(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    mac = path_mac(request)
    node_or_admin(request, mac)
    return negotiate.respond(request, f"layerboot node {mac}", node_status(state, mac), headers=NO_STORE)


async def handle_nodes(request: web.Request) -> web.StreamResponse:
    """Every node with its last report (admin token): what ``layerboot nodes`` shows, for tools and browsers."""
    state = request.app[STATE]
    if not is_admin(state, bearer(request)):
        raise AuthError("the node list needs the admin token (state/admin.token in the store)")
    nodes = [node.to_dict() for node in state.registry.all()]
    return negotiate.respond(request, f"layerboot nodes ({len(nodes)})", {"nodes": nodes}, headers=NO_STORE)


async def handle_status(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    data: dict[str, Any] = {
        "service": "layerbootd", "version": __version__, "uptime": int(time.monotonic() - state.started),
        "nodes": len(state.registry.all()), "profiles": len(state.profiles.names()),
    }
    if state.uploads is not None:
        data["uploads"] = state.uploads.counts()
    return negotiate.respond(request, "layerbootd is running", data, headers=NO_STORE)


# -- middleware --------------------------------------------------------------------------------------------
@web.middleware
async def errors_and_access_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes a negotiated one-line error; every request one access-log line (no query)."""
    start = time.monotonic()
    try:
        response = await handler(request)
    except AuthError as err:
        response = negotiate.error(request, err.status, err.message, hint=err.hint,
                                   headers={"WWW-Authenticate": "Bearer"} if err.status == 401 else None)
    except LayerbootError as err:
        status = 404 if isinstance(err, NotFoundError) else 400
        response = negotiate.error(request, status, err.message, hint=err.hint)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text.strip() if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("content-range", "retry-after", "allow")}
        response = negotiate.error(request, exc.status, message, headers=kept or None)
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        response = negotiate.error(request, 500, "internal server error (see the layerbootd log)")
    elapsed = (time.monotonic() - start) * 1000
    size = response.content_length or 0
    access_log.info("%s %s %s %s %d %.1fms", request.remote, request.method, request.path, response.status, size,
                    elapsed, extra={"fields": {"REMOTE_ADDR": request.remote, "REQUEST_METHOD": request.method,
                                               "REQUEST_PATH": request.path, "STATUS": response.status,
                                               "BYTES": size, "DURATION_MS": f"{elapsed:.1f}"}})
    return response


def build_app(state: ServerState, *, client_max_size: int) -> web.Application:
    app = web.Application(middlewares=[errors_and_access_log], client_max_size=client_max_size)
    app[STATE] = state
    app.router.add_get("/boot/{name}", handle_boot)
    app.router.add_get("/nodes/{mac}/manifest", handle_node_manifest)
    app.router.add_get("/profiles/{profile}/manifest", handle_profile_manifest)
    app.router.add_get("/objects/{digest}", handle_object)
    app.router.add_post("/nodes/{mac}/events", handle_event)
    app.router.add_get("/nodes/{mac}", handle_node)
    app.router.add_get("/nodes", handle_nodes)
    app.router.add_get("/status", handle_status)
    app.router.add_get("/", handle_status)
    from layerboot.server.receive import add_routes   # imports this module
    add_routes(app)
    return app
