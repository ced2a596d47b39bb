"""The HTTP side of layerbootd: per-MAC iPXE scripts, manifests, objects, boot reports, uploads, status.

URL contract (stage1 and the PXE set-up code against it; docs/server.md and docs/security.md have the long
form). "node" is that node's boot token (read-only) or its node secret; "secret" only the node secret:

    GET  /boot/{mac}.ipxe                 iPXE script (kernel + initrd URLs carrying a fresh boot token)
    GET  /nodes/{mac}/manifest            signed manifest of the node's profile                  (node)
    GET  /objects/{digest}                a layer, kernel or initrd the node's profile names
                                          (node, a boot token also as ?token=; admin: any object)
    GET  /profiles/{profile}/manifest     signed manifest             (admin, or a node of that profile)
    POST /nodes/{mac}/events              boot report JSON                                       (node)
    POST /nodes/{mac}/secret              claim a node secret     (boot token + asset key proof: auth/claim.py)
    PUT  /nodes/{mac}/uploads/{name}.tar.zst   upload a captured layer; 202 + id                (secret)
    POST /nodes/{mac}/heartbeat           runtime heartbeat JSON (server/monitor/http.py)       (secret)
    GET  /nodes/{mac}/uploads/{id}        state of one upload                          (secret or admin)
    GET  /nodes/{mac}                     node status                                  (secret or admin)
    GET  /nodes                           every node with its last report                       (admin)
    POST /discover/{mac}                  a discovery report of an unknown machine (anonymous; server/fleet)
    GET  /discover/{mac}                  is it accepted yet? (anonymous; server/fleet/discovery.py)
    GET  /status                          daemon status (public, no secrets)
    GET  /metrics                         Prometheus metrics (public, no secrets; server/monitor/metrics.py)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from layerboot import __version__, strictjson
from layerboot.diskspace import storage_error
from layerboot.errors import LayerbootError
from layerboot.overlays.names import DIGEST_RE
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.overlays.cmdline import CmdlineError
from layerboot.server import negotiate
from layerboot.server.auth.access import ADMIN, SECRET, SECRET_HINT, any_node_or_admin, bearer, for_node, identify
from layerboot.server.db.errors import DatabaseError
from layerboot.server.guard.body import read_body
from layerboot.server.guard.connections import ConnectionGuard
from layerboot.server.guard.limits import Limits, Slots, TooBusy
from layerboot.server.guard.sender import Sender
from layerboot.server.ipxe import BootScript
from layerboot.server.monitor.pins import boot_generation
from layerboot.server.nodes import AuthError, Event, Node, Registry, normalize_mac
from layerboot.server.objects import ProfileIndex, etag_matches, send_object
from layerboot.settings import Config

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
    tokens: Any = None           # auth.boottoken.BootTokens: mints and checks boot tokens (no database)
    secrets: Any = None          # auth.nodesecret.NodeSecrets
    boot_limiter: Any = None     # auth.ratelimit.RateLimiter: boot scripts per client address
    uploads: Any = None          # layerboot.server.uploads.Uploads, once started
    verifier: Any = None         # layerboot.server.verify.ObjectVerifier (None: objects are sent unchecked)
    started: float = 0.0
    limits: Limits = field(default_factory=lambda: Limits.from_config(Config()))
    slots: Slots = field(default_factory=Slots)
    guard: ConnectionGuard = field(default_factory=lambda: ConnectionGuard(Slots(), 0))
    sender: Sender | None = None   # server/guard/sender.py: set by main() (it starts threads)
    metrics: Any = None          # layerboot.server.monitor.metrics.Metrics
    monitor: Any = None          # layerboot.server.monitor.engine.Monitor, when monitor.enabled
    admins: Any = None           # layerboot.server.auth.admins.Admins: console accounts, sessions, API tokens
    jobs: Any = None             # layerboot.server.api.jobs.Jobs: background jobs (base imports)
    fleet: Any = None            # layerboot.server.fleet.queries.Fleet: named nodes, groups, discoveries
    node_manifests: Any = None   # layerboot.server.fleet.manifest.NodeManifests: per-node manifests
    discovery_limiter: Any = None   # auth.ratelimit.RateLimiter: discovery reports and polls per address
    replica: Any = None          # layerboot.server.replica.member.Replica: this daemon's id and claims


STATE = web.AppKey("layerboot", ServerState)


def path_mac(request: web.Request) -> str:
    return normalize_mac(request.match_info["mac"])


def public_url(request: web.Request) -> str:
    """The base URL nodes use: server.public_url, else the address this request came in on."""
    configured = request.app[STATE].config.server_public_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    if not HOST_RE.fullmatch(host):
        raise LayerbootError(f"bad Host header {host!r}", hint="set server.public_url")
    return f"http://{host}"


def authenticate_write(request: web.Request, mac: str) -> Node:
    """The node ``mac``, proven by its write credential (its node secret): heartbeats."""
    caller = for_node(request.app[STATE], request, mac, "a heartbeat", boot=False)
    assert caller.node is not None
    return caller.node


# -- iPXE --------------------------------------------------------------------------------------------------
async def handle_boot(request: web.Request) -> web.StreamResponse:
    """The per-MAC iPXE script with a fresh boot token. Needs no disk write: the token is stateless, and the
    bookkeeping (boot count, auto-registration) is best effort."""
    state = request.app[STATE]
    name = request.match_info["name"]
    if not name.endswith(".ipxe"):
        raise web.HTTPNotFound(text="boot scripts are /boot/MAC.ipxe")
    mac = normalize_mac(name.removesuffix(".ipxe"))
    wait = state.boot_limiter.wait(request.remote or "-") if state.boot_limiter else 0.0
    if wait:
        log.warning("refused a boot script for %s to %s: over server.boot_scripts_per_minute", mac, request.remote)
        return negotiate.error(request, 429, f"too many boot scripts for {request.remote}; try again in "
                               f"{int(wait) + 1} s", headers={"Retry-After": str(int(wait) + 1)})
    key = state.fleet.key_of(mac) if state.fleet is not None else None     # any NIC of a named node
    node = state.registry.find(key or mac)
    if node is None:
        if state.config.server_unknown_mac == "discover":
            return discovery_script(request, state, mac)
        if state.config.server_unknown_mac != "default":
            log.warning("refused unknown MAC %s (server.unknown_mac = refuse)", mac)
            return negotiate.error(request, 403, f"node {mac} is not registered with this server",
                                   hint=f"register it: layerboot nodes register {mac} --profile PROFILE")
        profile = state.config.server_default_profile
        if not profile:
            return negotiate.error(request, 503, "unknown MACs get the default profile, but none is set",
                                   hint="set server.default_profile")
        state.profiles.current(profile)   # fail before registering anything
        node = state.registry.auto_register(mac, profile)
        log.info("unknown MAC %s boots the default profile %s%s", mac, profile, "" if node else " (not recorded)")
        if node is None:   # not recorded (a full disk?): it boots all the same
            node = Node(mac=mac, profile=profile, auto=True, created="")
    gen = boot_generation(node, state.profiles)
    if not gen.kernel or not gen.initrd:
        return negotiate.error(request, 409, f"profile {gen.profile} generation {gen.number} has no "
                               f"{'kernel' if not gen.kernel else 'initrd'}",
                               hint=f"layerboot profile set {gen.profile} --kernel REF --initrd REF")
    try:
        cmdline = node_cmdline(state, node, gen)
        script = BootScript(base=public_url(request), mac=mac, node=node.mac, profile=gen.profile,
                            token=state.tokens.mint(node.mac), kernel=gen.kernel, initrd=gen.initrd, cmdline=cmdline)
        text = script.render()
    except LayerbootError as err:
        log.warning("no boot script for %s: %s", mac, err.message)
        return negotiate.error(request, 409, err.message, hint=err.hint)
    if node.created:
        state.registry.saw_boot(node.mac)
    log.info("boot script for %s%s: profile %s generation %d", mac, f" ({node.name})" if node.name else "",
             gen.profile, gen.number)
    return web.Response(text=text, content_type="text/plain", headers=NO_STORE)


def node_cmdline(state: ServerState, node: Node, gen: Any) -> str:
    """The kernel command line a node boots with (before layerbootd's own options): the profile's, or for a
    named node the profile's with the node's kernel args and network (server/fleet/netargs.py)."""
    if not node.name or state.fleet is None:
        return gen.cmdline
    from layerboot.server.fleet.netargs import fleet_cmdline

    return fleet_cmdline(state.fleet, state.config, node.mac, gen.cmdline)


def discovery_script(request: web.Request, state: ServerState, mac: str) -> web.StreamResponse:
    """An unknown MAC's discovery boot (server.unknown_mac = "discover"; server/fleet/discovery.py)."""
    from layerboot.server.ipxe import DiscoveryScript

    record = state.fleet.discovery(mac) if state.fleet is not None else None
    if record is not None and record["state"] == "rejected":
        log.warning("refused %s: the admin rejected it", mac)
        return negotiate.error(request, 403, f"machine {mac} was rejected by this server's admin",
                               hint="layerboot nodes pending --all shows it; 'nodes forget MAC' lets it try again")
    profile = state.config.fleet_discovery_profile
    if not profile:
        return negotiate.error(request, 503, "unknown MACs get the discovery boot, but fleet.discovery_profile "
                               "is not set", hint="set fleet.discovery_profile (its kernel and initrd are used)")
    gen = state.profiles.current(profile)
    if not gen.kernel or not gen.initrd:
        return negotiate.error(request, 409, f"the discovery profile {profile} has no kernel or initrd")
    script = DiscoveryScript(base=public_url(request), mac=mac, token=state.tokens.mint(mac), kernel=gen.kernel,
                             initrd=gen.initrd, cmdline=gen.cmdline, menu_timeout=state.config.fleet_menu_timeout)
    try:
        text = script.render()
    except CmdlineError as err:
        return negotiate.error(request, 409, err.message, hint=err.hint)
    log.info("unknown MAC %s: discovery boot (profile %s generation %d)", mac, profile, gen.number)
    return web.Response(text=text, content_type="text/plain", headers=NO_STORE)


def discovering(state: ServerState, node: Node) -> bool:
    """A machine in its discovery boot: it holds a boot token but is no node."""
    return not node.created and state.config.server_unknown_mac == "discover"


# -- manifests and objects ---------------------------------------------------------------------------------
def manifest_response(body: bytes, generation: int, serial: int) -> web.Response:
    return web.Response(body=body, content_type="application/json",
                        headers={**NO_STORE, "X-Layerboot-Generation": str(generation),
                                 "X-Layerboot-Serial": str(serial)})


async def handle_node_manifest(request: web.Request) -> web.StreamResponse:
    """The node's manifest: its profile's newest generation, or its pinned one (server/monitor/pins.py)."""
    from layerboot.server.monitor.pins import node_manifest

    state = request.app[STATE]
    mac = path_mac(request)
    caller = for_node(state, request, mac, "the node's manifest", admin=True)
    node = caller.node or state.registry.get(mac)
    if discovering(state, node):
        raise AuthError(f"{mac} is in its discovery boot: it gets no manifest until it is accepted", status=403)
    if node.name and state.node_manifests is not None:     # a named node: its own manifest (server/fleet)
        body, gen, serial = await asyncio.to_thread(state.node_manifests.serve, node.mac)
        return manifest_response(body, gen.number, serial)
    if node.pinned_generation is None:
        gen = state.profiles.current(node.profile)
        return manifest_response(state.profiles.signed_manifest(node.profile, gen.number), gen.number, gen.serial)
    body, gen, serial = await asyncio.to_thread(node_manifest, state.registry, state.profiles, node)
    return manifest_response(body, gen.number, serial)


async def handle_profile_manifest(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    profile = request.match_info["profile"]
    caller = any_node_or_admin(state, request, "this needs the admin token or a credential of a node of "
                               "this profile")
    if caller.node is not None and discovering(state, caller.node):
        raise AuthError(f"{caller.node.mac} is in its discovery boot: it reads no manifest", status=403)
    if caller.node is not None and caller.node.profile != profile:
        raise AuthError(f"node {caller.node.mac} boots profile {caller.node.profile}, not {profile}", status=403)
    gen = state.profiles.current(profile)
    return manifest_response(state.profiles.signed_manifest(profile, gen.number), gen.number, gen.serial)


async def handle_object(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    digest = request.match_info["digest"]
    if not DIGEST_RE.fullmatch(digest):
        raise LayerbootError(f"{digest[:80]!r} is not a sha256 digest (64 lowercase hex characters)")
    caller = any_node_or_admin(state, request, "objects need a credential (Authorization: Bearer, or a boot "
                               "token as ?token=)", query=True)
    node = caller.node
    private = False
    if node is not None:
        if discovering(state, node):
            gen = state.profiles.current(node.profile)
            if digest not in (gen.kernel, gen.initrd):
                raise AuthError("a machine in its discovery boot gets the discovery kernel and initrd only", status=403)
        elif not state.index.allows(node.profile, digest):
            private = node_layer_access(state, caller, digest)
    elif state.fleet is not None:
        private = state.fleet.layer_owner(digest) is not None
    path = state.paths.object(digest)
    if not path.is_file():
        if state.verifier is not None and state.verifier.quarantined(digest):
            raise state.verifier.damaged(digest)
        raise web.HTTPNotFound(text=f"object {digest[:12]} is not in the store")
    assert state.sender is not None

    async def send() -> web.StreamResponse:
        handle = None
        if state.verifier is not None and request.method != "HEAD" and \
                not etag_matches(request.headers.get("If-None-Match", ""), digest):
            handle = await state.verifier.open(path, digest)   # verified before a byte of it goes out
        return await send_object(request, path, digest, state.sender, handle=handle, private=private)

    if node is None:
        response = await send()
    else:
        with state.slots.hold("download", node.mac, state.limits.downloads_per_node,
                              setting="server.max_downloads_per_node"):
            response = await send()
    if state.metrics is not None and request.method != "HEAD":
        state.metrics.served_bytes.inc(response.content_length or 0)
    return response


def node_layer_access(state: ServerState, caller: Any, digest: str) -> bool:
    """True when ``digest`` is the caller's own per-node layer and it proved itself with its node secret; an
    AuthError otherwise. Such a layer holds the node's private keys and its cluster's hosts: never served with a
    boot token (anyone on the node, or anyone fetching /boot/MAC.ipxe, has that), nor to another node."""
    node = caller.node
    owner = state.fleet.layer_owner(digest) if state.fleet is not None else None
    if owner is None:
        raise AuthError(f"object {digest[:12]} is not named by any manifest of profile {node.profile}", status=403)
    if owner != node.mac:
        raise AuthError(f"object {digest[:12]} is another node's private layer", status=403)
    if caller.kind != SECRET:
        raise AuthError(f"object {digest[:12]} is node {node.mac}'s private layer: it is served with the node "
                        "secret only, not with a boot token", status=403, hint=SECRET_HINT)
    return True


# -- reports and status ------------------------------------------------------------------------------------
async def read_json(request: web.Request, limit: int, what: str) -> Any:
    """A small JSON request body: 413 past ``limit`` bytes, 408 when it stalls (server.read_timeout), one-line
    400 unless it is strict JSON (layerboot.strictjson)."""
    raw = await read_body(request, limit, request.app[STATE].limits.read_timeout)
    return strictjson.loads(raw, what=what)


async def handle_event(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    node = for_node(state, request, path_mac(request), "posting a boot event").node
    assert node is not None
    if discovering(state, node):
        raise AuthError(f"{node.mac} is in its discovery boot: it is no node yet", status=403)
    event = Event.from_json(await read_json(request, MAX_EVENT_BYTES, "boot event"))
    if state.metrics is not None:
        state.metrics.boot_event(event)
    (log.info if event.ok else log.warning)("node %s: %s %s%s", node.mac, event.stage, "ok" if event.ok else "FAILED",
                                            f": {event.message}" if event.message else "")
    if not node.created and state.registry.auto_register(node.mac, node.profile) is None:
        raise web.HTTPServiceUnavailable(text=f"cannot record node {node.mac} now", headers={"Retry-After": "60"})
    try:
        state.registry.record_event(node.mac, event)
    except DatabaseError as err:   # bookkeeping: the boot it reports goes on without it
        log.warning("could not record the boot event of %s: %s", node.mac, err.message)
        raise web.HTTPServiceUnavailable(text=f"cannot record the event now: {err.message}",
                                         headers={"Retry-After": "60"}) from None
    return web.json_response({"recorded": True}, status=201)


def node_status(state: ServerState, mac: str) -> dict[str, Any]:
    node = state.registry.get(mac)
    data = node.public_dict()
    data["ssh_keys"] = len(state.registry.ssh_keys(mac))
    data["events"] = [e.to_dict() for e in state.registry.events(mac)]
    return data


async def handle_node(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    mac = path_mac(request)
    for_node(state, request, mac, "the node's status", boot=False, admin=True)
    return negotiate.respond(request, f"layerboot node {mac}", node_status(state, mac), headers=NO_STORE)


async def handle_nodes(request: web.Request) -> web.StreamResponse:
    """Every node with its last report (admin token): what ``layerboot nodes`` shows, for tools and browsers."""
    state = request.app[STATE]
    missing = "the node list needs the admin token (state/admin.token in the store)"
    if identify(state, bearer(request), missing).kind != ADMIN:
        raise AuthError(missing, status=403)
    nodes = [node.public_dict() for node in state.registry.all()]
    return negotiate.respond(request, f"layerboot nodes ({len(nodes)})", {"nodes": nodes}, headers=NO_STORE)


def status_data(state: ServerState) -> dict[str, Any]:
    """What GET /status and GET /api/v1/status show (public: counts, no secrets)."""
    data: dict[str, Any] = {
        "service": "layerbootd", "version": __version__, "uptime": int(time.monotonic() - state.started),
        "nodes": len(state.registry.all()), "profiles": len(state.profiles.names()),
    }
    if state.uploads is not None:
        data["uploads"] = state.uploads.counts()
    data["in_progress"] = ({"connections": 0, "downloads": 0, "uploads": 0} | state.slots.counts()
                           | {"sending": state.sender.active() if state.sender else 0})
    if state.replica is not None and state.replica.enabled:
        data["replica"] = {"id": state.replica.id, "others": [row["id"] for row in state.replica.others()]}
    return data


async def handle_status(request: web.Request) -> web.StreamResponse:
    if request.path == "/" and negotiate.client_kind(request) == "html" and request.app[STATE].config.console_enabled:
        raise web.HTTPFound("/console/")          # a browser at the server's address: the admin console
    return negotiate.respond(request, "layerbootd is running", status_data(request.app[STATE]), headers=NO_STORE)


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
    except TooBusy as err:
        response = negotiate.error(request, err.status, err.message, hint=err.hint,
                                   headers={"Retry-After": str(err.retry_after)})
    except LayerbootError as err:
        status = err.http_status
        if status >= 500:
            log.error("%s %s: %s", request.method, request.path, err.message)
        response = negotiate.error(request, status, err.message, hint=err.hint)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text.strip() if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        kept = {k: v for k, v in exc.headers.items()
                if k.lower() in ("content-range", "retry-after", "allow", "connection")}
        response = negotiate.error(request, exc.status, message, headers=kept or None)
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as err:
        storage = storage_error(err)   # a full or failing disk under a database write, ...: one line
        if storage is None:
            log.exception("internal error on %s %s", request.method, request.path)
            response = negotiate.error(request, 500, "internal server error (see the layerbootd log)")
        else:
            log.error("%s %s: %s", request.method, request.path, storage.message)
            response = negotiate.error(request, storage.http_status, storage.message, hint=storage.hint)
    elapsed = (time.monotonic() - start) * 1000
    # Path and user agent are the client's text: the log formatter (layerboot.log.SafeFormatter) escapes them.
    size = response.content_length or 0
    agent = request.headers.get("User-Agent", "-")[:200]
    access_log.info("%s %s %s %s %d %.1fms %r", request.remote, request.method, request.path, response.status, size,
                    elapsed, agent, extra={"fields": {"REMOTE_ADDR": request.remote, "REQUEST_METHOD": request.method,
                                                      "REQUEST_PATH": request.path, "STATUS": response.status,
                                                      "BYTES": size, "DURATION_MS": f"{elapsed:.1f}",
                                                      "USER_AGENT": agent}})
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
    from layerboot.server.auth import claim
    from layerboot.server.receive import add_routes   # imports this module
    add_routes(app)
    claim.add_routes(app)
    from layerboot.server.monitor.http import add_routes as add_monitor_routes
    add_monitor_routes(app)
    from layerboot.server.api.routes import add_routes as add_api_routes
    add_api_routes(app)
    if state.config.console_enabled:
        from layerboot.server.console.app import setup as setup_console
        setup_console(app)
    from layerboot.server.fleet.discovery import add_routes as add_discovery_routes
    add_discovery_routes(app)
    return app
