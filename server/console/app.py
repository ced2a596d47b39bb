"""The console's plumbing: Jinja2 templates (package data, through aiohttp-jinja2), the stylesheet and script
(``/console/static/``), the login guard, notices, security headers and its routes.

Every page but the login page needs a console session (server/auth/web.py); without one a browser is sent to
``/console/login?next=...``. With ``server.tls_cert`` set, a page asked for over plain HTTP is redirected to
HTTPS first, so a password never crosses the network in clear. Pages are rendered on the server; the one
script (static/console.js) only refreshes a page's live parts and asks before a destructive button.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from layerboot import __version__
from layerboot.errors import LayerbootError
from layerboot.safetext import printable
from layerboot.server.auth.web import current_session, is_https

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
NOTICE_COOKIE = "layerboot_notice"
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _state(request: web.Request) -> Any:
    from layerboot.server.http import STATE
    return request.app[STATE]


def https_redirect(request: web.Request) -> web.HTTPException | None:
    """With TLS configured, a console page over plain HTTP goes to the same path over HTTPS."""
    config = _state(request).config
    if not config.server_tls_cert or is_https(request):
        return None
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    port = "" if config.server_tls_port == 443 else f":{config.server_tls_port}"
    return web.HTTPFound(f"https://{host}{port}{request.path_qs}")


def safe_next(target: str | None) -> str:
    """Where to go after the login: a console path only (never another site)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


def page(handler: Handler) -> Handler:
    """A console page: HTTPS when configured, a session, security headers, console errors as a page."""
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        redirect = https_redirect(request)
        if redirect is not None:
            raise redirect
        if current_session(request) is None:
            raise web.HTTPFound(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))
        try:
            response = await handler(request)
        except LayerbootError as err:
            if request.method == "POST":         # a refused change: back to the page, with the reason
                response = back(request, err.message + (f" ({err.hint})" if err.hint else ""), error=True)
            else:
                status = getattr(err, "status", None) or err.http_status
                response = aiohttp_jinja2.render_template("error.html", request, {
                    "title": "Error", "message": err.message, "hint": err.hint, "status": status}, status=status)
        response.headers.update(HEADERS)
        return response
    return wrapper


def see_other(location: str) -> web.Response:
    """303 See Other: the answer to a form (Post/Redirect/Get)."""
    return web.Response(status=303, headers={"Location": location})


def back(request: web.Request, message: str, *, error: bool = False, to: str | None = None) -> web.Response:
    """Redirect (303) to ``to`` or the page the form was on, with a one-line notice shown there once."""
    referer = request.headers.get("Referer", "")
    target = to or (referer.split(request.host, 1)[1] if request.host in referer else PREFIX + "/")
    response = see_other(safe_next(target))
    text = ("! " if error else "") + printable(message)[:500]
    response.set_cookie(NOTICE_COOKIE, quote(text), path=PREFIX, httponly=True, samesite="Strict",
                        secure=is_https(request), max_age=60)
    return response


async def context(request: web.Request) -> dict[str, Any]:
    from urllib.parse import unquote
    session = current_session(request)
    notice = unquote(request.cookies.get(NOTICE_COOKIE, ""))
    if notice:
        request["layerboot_clear_notice"] = True
    return {"session": session, "csrf": session.csrf if session else "", "version": __version__,
            "path": request.path, "notice": notice.removeprefix("! "), "notice_error": notice.startswith("! "),
            "prefix": PREFIX, "now": time.time()}


@web.middleware
async def clear_notice(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A notice is shown once: the response of the page that showed it deletes its cookie."""
    response = await handler(request)
    if request.get("layerboot_clear_notice") and not isinstance(response, web.HTTPException):
        response.del_cookie(NOTICE_COOKIE, path=PREFIX)
    return response


@functools.lru_cache(maxsize=16)
def static_url(name: str) -> str:
    """The URL of a static file, with a digest of its content so a new version is never taken from a cache."""
    import hashlib
    return f"{PREFIX}/static/{name}?v={hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]}"


def setup(app: web.Application) -> None:
    from layerboot.server.console import filters, forms, pages

    env = aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("layerboot.server.console", "templates"),
                               autoescape=jinja2.select_autoescape(default=True), context_processors=[context],
                               filters=filters.FILTERS, undefined=jinja2.StrictUndefined, trim_blocks=True,
                               lstrip_blocks=True, default_helpers=False)
    env.globals["static"] = static_url
    app.middlewares.append(clear_notice)
    app.router.add_static(f"{PREFIX}/static/", STATIC)
    forms.add_routes(app)
    pages.add_routes(app)
