"""Browser and API callers of the admin side: session cookies, CSRF tokens, proxies, HTTPS.

* :func:`client_address` is the peer, or the first untrusted hop of ``X-Forwarded-For`` when the peer is one of
  ``server.trusted_proxies`` (nginx in front); :func:`is_https` is TLS on this connection, or
  ``X-Forwarded-Proto: https`` from a trusted proxy.
* The session cookie (``layerboot_session``) is HttpOnly, ``SameSite=Strict``, ``Path=/`` and ``Secure``
  when the request came over HTTPS.
* Every change made with a session carries the session's CSRF token: the ``csrf`` form field (console forms)
  or the ``X-CSRF-Token`` header (scripts in the page). A Bearer credential needs none (a browser never sends
  one by itself).
* :func:`admin_caller` is who calls an /api/v1 route: the admin token or an API token (``Authorization:
  Bearer``), or a console session.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from aiohttp import web

from layerboot.server.auth.access import ADMIN, Caller, bearer, identify
from layerboot.server.nodes import AuthError

SESSION_COOKIE = "layerboot_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _trusted(state: Any, address: str) -> bool:
    proxies = state.config.server_trusted_proxies
    if not proxies or not address:
        return False
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in proxies:
        try:
            if peer in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_address(request: web.Request) -> str:
    """Who is on the other end: the peer, or what a trusted proxy says the client is."""
    from layerboot.server.http import STATE

    peer = request.remote or "-"
    state = request.app[STATE]
    if not _trusted(state, peer):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):           # the last hop the trusted proxies did not add themselves
        if not _trusted(state, hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer


def is_https(request: web.Request) -> bool:
    from layerboot.server.http import STATE

    if request.secure:
        return True
    return (_trusted(request.app[STATE], request.remote or "")
            and request.headers.get("X-Forwarded-Proto", "").lower() == "https")


def set_session_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(SESSION_COOKIE, sid, path="/", httponly=True, samesite="Strict", secure=is_https(request))


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/", secure=is_https(request), httponly=True, samesite="Strict")


def current_session(request: web.Request) -> Any:
    """The request's live console session (auth.admins.Session), or None; cached on the request."""
    from layerboot.server.http import STATE

    if "layerboot_session" not in request:
        sid = request.cookies.get(SESSION_COOKIE, "")
        admins = request.app[STATE].admins
        request["layerboot_session"] = admins.session(sid) if sid and admins is not None else None
    return request["layerboot_session"]


def csrf_ok(session: Any, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


def check_csrf(request: web.Request, session: Any, form: Any = None) -> None:
    """403 unless the change carries the session's CSRF token (form field or header)."""
    given = request.headers.get(CSRF_HEADER) or (form.get(CSRF_FIELD) if form is not None else None)
    if not csrf_ok(session, given):
        raise AuthError("this change needs the page's CSRF token (reload the page and try again)", status=403)


def admin_caller(request: web.Request, *, form: Any = None) -> Caller:
    """An admin calling the API: a Bearer admin/API token, or a console session (changes need its CSRF token)."""
    from layerboot.server.http import STATE

    state = request.app[STATE]
    missing = ("the API needs an admin credential: 'Authorization: Bearer' with the admin token or an API token "
               "('layerboot admin token create'), or a console login")
    token = bearer(request)
    if token:
        caller = identify(state, token, missing)
        if caller.kind != ADMIN:
            raise AuthError("node credentials do not open the admin API", status=403)
        return caller
    session = current_session(request)
    if session is None:
        raise AuthError(missing)
    if request.method not in SAFE_METHODS:
        check_csrf(request, session, form)
    return Caller(ADMIN, who=session.admin)
