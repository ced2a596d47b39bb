"""The console's forms (POST): login, logout, and every change an admin makes.

Each change checks the session's CSRF token, calls the same function the API calls (server/api/actions.py),
and answers with a redirect (303, Post/Redirect/Get) to the page it came from, which shows one notice line:
what was done, or the one-line reason it was refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from layerboot.server.api import actions
from layerboot.server.auth.admins import LoginRefused
from layerboot.server.auth.web import (CSRF_FIELD, check_csrf, clear_session_cookie, client_address,
                                       current_session, is_https, set_session_cookie)
from layerboot.server.console.app import HEADERS, PREFIX, _state, back, https_redirect, page, safe_next, see_other

log = logging.getLogger("layerboot.server.console")

LOGIN_COOKIE = "layerboot_login"         # the login form's own CSRF token (double submit), before any session
MAX_FORM = 16 << 10


async def _form(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM, actual_size=request.content_length)
    return await request.post()


def _changer(request: web.Request, form: Any) -> str:
    session = current_session(request)
    check_csrf(request, session, form)
    return session.admin


# -- login -----------------------------------------------------------------------------------------------------
def _login_page(request: web.Request, *, error: str = "", status: int = 200, name: str = "") -> web.Response:
    token = secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template("login.html", request, {
        "title": "Log in", "error": error, "login_csrf": token, "name": name,
        "next": safe_next(request.query.get("next")), "https": is_https(request),
        "tls": bool(_state(request).config.server_tls_cert)}, status=status)
    response.set_cookie(LOGIN_COOKIE, token, path=f"{PREFIX}/login", httponly=True, samesite="Strict",
                        secure=is_https(request), max_age=3600)
    response.headers.update(HEADERS)
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    redirect = https_redirect(request)
    if redirect is not None:
        raise redirect
    if current_session(request) is not None:
        raise web.HTTPFound(safe_next(request.query.get("next")))
    return _login_page(request)


async def login(request: web.Request) -> web.StreamResponse:
    redirect = https_redirect(request)
    if redirect is not None:
        raise redirect
    state = _state(request)
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, str(form.get(CSRF_FIELD, ""))):
        return _login_page(request, error="the login form expired; please try again", status=403)
    name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
    address = client_address(request)
    try:
        admin = await asyncio.to_thread(state.admins.login, name, password, address)
    except LoginRefused as err:
        log.warning("console: login refused for %r from %s: %s", name[:40], address, err.message)
        response = _login_page(request, error=err.message, status=err.status, name=name[:40])
        if err.retry_after:
            response.headers["Retry-After"] = str(err.retry_after)
        return response
    sid, _ = await asyncio.to_thread(state.admins.open_session, admin.name, address)
    log.info("console: %s logged in from %s", admin.name, address)
    response = see_other(safe_next(str(form.get("next", ""))))
    set_session_cookie(request, response, sid)
    response.del_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


@page
async def logout(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    state = _state(request)
    from layerboot.server.auth.web import SESSION_COOKIE
    await asyncio.to_thread(state.admins.close_session, request.cookies.get(SESSION_COOKIE, ""))
    log.info("console: %s logged out", who)
    response = see_other(f"{PREFIX}/login")
    clear_session_cookie(request, response)
    return response


# -- changes ---------------------------------------------------------------------------------------------------
@page
async def upload_action(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    upload_id, action = request.match_info["id"], request.match_info["action"]
    do = actions.approve_upload if action == "approve" else actions.reject_upload
    upload = await asyncio.to_thread(do, _state(request), upload_id, who)
    text = (f"upload {upload.id} approved: generation {upload.generation} of {upload.profile}" if action == "approve"
            else f"upload {upload.id} rejected")
    return back(request, text, to=f"{PREFIX}/uploads")


@page
async def rollback(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    name = request.match_info["name"]
    gen = await asyncio.to_thread(actions.rollback, _state(request), name, form.get("generation", ""), who)
    return back(request, f"{name}: generation {gen.number} ({gen.action}), serial {gen.serial}",
                to=f"{PREFIX}/profiles/{name}")


@page
async def cherry_pick(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    name = request.match_info["name"]
    source, _, layer = str(form.get("pick", "")).partition(":")
    gen = await asyncio.to_thread(actions.cherry_pick, _state(request), name, source, layer, who)
    return back(request, f"{name}: generation {gen.number} ({gen.action})", to=f"{PREFIX}/profiles/{name}")


@page
async def incident_action(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    changed = await asyncio.to_thread(actions.incident, _state(request), request.match_info["id"],
                                      request.match_info["action"], who)
    return back(request, f"incident #{changed.id} ({changed.type} on {changed.mac}) is {changed.state}",
                to=f"{PREFIX}/incidents")


@page
async def power(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    mac = request.match_info["mac"]
    action = str(form.get("action", ""))
    result = await actions.power(_state(request), mac, action, who)
    verb = {"on": "powered on", "off": "powered off", "cycle": "power-cycled", "status": "asked"}.get(action, action)
    return back(request, f"{result['mac']} {verb}: power is {result['state']}", to=f"{PREFIX}/nodes/{result['mac']}")


@page
async def start_import(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    who = _changer(request, form)
    kind = str(form.get("kind", ""))
    params = {key: str(form.get(key, "")) for key in ("iso", "suite", "include", "image", "ref", "description")
              if form.get(key) not in (None, "")}
    job = await asyncio.to_thread(actions.start_import, _state(request), kind, params, who)
    return back(request, f"base import {job.id} ({job.kind}) started", to=f"{PREFIX}/base")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/login", login_form)
    r.add_post(f"{PREFIX}/login", login)
    r.add_post(f"{PREFIX}/logout", logout)
    r.add_post(f"{PREFIX}/uploads/{{id}}/{{action:approve|reject}}", upload_action)
    r.add_post(f"{PREFIX}/profiles/{{name}}/rollback", rollback)
    r.add_post(f"{PREFIX}/profiles/{{name}}/cherry-pick", cherry_pick)
    r.add_post(f"{PREFIX}/incidents/{{id}}/{{action:pause|resume|close}}", incident_action)
    r.add_post(f"{PREFIX}/nodes/{{mac}}/power", power)
    r.add_post(f"{PREFIX}/base", start_import)
