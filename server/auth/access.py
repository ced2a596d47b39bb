"""Map a request's credential to a :class:`Caller` and check what it may do (the table in docs/security.md).

One place decides, for every route: :func:`identify` says who a bearer is (admin, a node by its secret, a node
by its boot token), :func:`for_node` checks that it may act on node ``mac`` in the way the route needs.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from layerboot.server.auth.admins import TOKEN_PREFIX as API_TOKEN_PREFIX
from layerboot.server.auth.boottoken import looks_like_boot_token
from layerboot.server.auth.nodesecret import secret_hash
from layerboot.server.nodes import AuthError, Node

ADMIN, SECRET, BOOT = "admin", "secret", "boot"
SECRET_HINT = ("the node secret is root-only in /run/layerboot/node.secret on a node that claimed one at boot; "
               "'layerboot nodes register' and 'nodes secret rotate' print one for the admin to place")


@dataclass(frozen=True)
class Caller:
    kind: str                   # ADMIN, SECRET or BOOT
    node: Node | None = None    # None for the admin
    who: str = ""               # for an admin: "admin token", or the account of an API token or session


def bearer(request: web.Request, *, query: bool = False) -> str | None:
    """The ``Authorization: Bearer`` credential; with ``query``, a boot token in ``?token=`` also counts
    (iPXE's kernel and initrd URLs). A node secret never goes in a URL: there it is refused."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return _token_text(value.strip())
        raise AuthError("Authorization must be 'Bearer TOKEN'")
    if query and request.query.get("token"):
        token = _token_text(request.query["token"])
        if not looks_like_boot_token(token):
            raise AuthError("only a boot token may be given as ?token= (URLs end up in logs); send other "
                            "credentials as 'Authorization: Bearer'")
        return token
    return None


def _token_text(token: str) -> str:
    """Tokens are printable ASCII; anything else (aiohttp passes undecodable bytes on as surrogates) is refused
    before it is hashed."""
    if not (token.isascii() and token.isprintable()):
        raise AuthError("a token is printable ASCII")
    return token


def _boot_node(state: Any, token: str) -> Node:
    issued = state.tokens.verify(token)
    node = state.registry.find(issued.mac)
    if node is None:
        profile = state.config.server_default_profile
        if state.config.server_unknown_mac == "default" and profile:
            return Node(mac=issued.mac, profile=profile, auto=True, created="")   # not recorded (yet)
        discovery = state.config.fleet_discovery_profile
        if state.config.server_unknown_mac == "discover" and discovery:        # in its discovery boot: the
            return Node(mac=issued.mac, profile=discovery, auto=True, created="")   # discovery kernel and initrd
        raise AuthError(f"node {issued.mac} is not registered")
    if issued.issued <= node.tokens_not_before:
        raise AuthError("this boot token was revoked ('layerboot nodes revoke-tokens')",
                        hint="the node gets a new one at its next PXE boot")
    return node


def identify(state: Any, token: str | None, missing: str) -> Caller:
    """Who holds ``token``; AuthError 401 when nobody (``missing`` is the message for no token at all)."""
    if not token:
        raise AuthError(missing)
    if hmac.compare_digest(secret_hash(token), state.admin_token_hash):
        return Caller(ADMIN, who="admin token")
    if token.startswith(API_TOKEN_PREFIX) and getattr(state, "admins", None) is not None:
        account = state.admins.token_admin(token)
        if account is None:
            raise AuthError("unknown or revoked API token", hint="'layerboot admin token list' shows the valid ones")
        return Caller(ADMIN, who=account)
    if looks_like_boot_token(token):
        return Caller(BOOT, _boot_node(state, token))
    mac = state.secrets.node_of(token)
    node = state.registry.find(mac) if mac else None
    if node is None:
        raise AuthError("unknown token or node secret")
    return Caller(SECRET, node)


def for_node(state: Any, request: web.Request, mac: str, what: str, *, boot: bool = True, admin: bool = False,
             query: bool = False) -> Caller:
    """The caller, if it may do ``what`` on node ``mac``: that node's secret always, its boot token when
    ``boot``, the admin token when ``admin``. 401 without a valid credential, 403 with the wrong kind."""
    caller = identify(state, bearer(request, query=query), f"{what} needs a credential of node {mac} "
                      "(Authorization: Bearer ...)")
    if caller.kind == ADMIN:
        if admin:
            return caller
        raise AuthError(f"{what} is done by the node itself; the admin token is not accepted here", status=403)
    assert caller.node is not None
    if caller.node.mac != mac:
        raise AuthError(f"this credential belongs to another node, not {mac}", status=403)
    if caller.kind == BOOT and not boot:
        raise AuthError(f"boot tokens are read-only: {what} needs the node secret", status=403, hint=SECRET_HINT)
    return caller


def any_node_or_admin(state: Any, request: web.Request, missing: str, *, query: bool = False) -> Caller:
    """The caller whatever node it is (boot token or secret), or the admin; AuthError otherwise."""
    return identify(state, bearer(request, query=query), missing)
