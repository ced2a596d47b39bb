"""Content negotiation for status and error responses: one message, four renderings.

* iPXE (User-Agent contains "iPXE") gets an ``#!ipxe`` script that prints the message and stops. iPXE does
  not run a script it got with an error status, so these are sent with status 200 (except on /objects,
  where iPXE is fetching a kernel or initrd and a real error status is what makes its ``kernel`` fail);
* the API (``/api/...``) always answers JSON;
* otherwise the ``Accept`` header decides, q-values and wildcards included (python-mimeparse, RFC 9110
  section 12.5.1): the best of text/html (a small HTML page), application/json and text/plain. On a tie
  (``*/*``, as curl sends) text/plain wins, and so it does with no Accept header or nothing acceptable.
"""

from __future__ import annotations

import html
import json
from typing import Any

import mimeparse
from aiohttp import web

from layerboot import strictjson

IPXE_SLEEP = 30
# What we can render, least preferred first: mimeparse.best_match gives ties to the later entry.
OFFERED = ("text/html", "application/json", "text/plain")
KINDS = {"text/html": "html", "application/json": "json", "text/plain": "text"}


def client_kind(request: web.BaseRequest) -> str:
    """'ipxe', 'json', 'html' or 'text' for this request."""
    if "ipxe" in request.headers.get("User-Agent", "").lower():
        return "ipxe"
    if request.path.startswith("/api/"):       # the versioned API answers JSON, errors included
        return "json"
    return KINDS.get(best_type(request.headers.get("Accept", ""), OFFERED), "text")


def best_type(accept: str, offered: tuple[str, ...]) -> str:
    """The offered media type the Accept header prefers ('' when none is acceptable or the header is empty or
    malformed); ties go to the later entry of ``offered``."""
    if not accept.strip():
        return ""
    try:
        return mimeparse.best_match(list(offered), accept[:2000])
    except (ValueError, IndexError, mimeparse.MimeTypeParseException):   # a malformed header is "no preference"
        return ""


def ipxe_quote(text: str) -> str:
    """Make text safe for an iPXE ``echo``: one line, no ${...} expansion, no command separators."""
    cleaned = " ".join(text.split())
    return "".join(c if c.isprintable() and c not in "$&|;#\\" else " " for c in cleaned)


def ipxe_refusal(message: str, *, sleep: int = IPXE_SLEEP) -> str:
    """An iPXE script that shows ``message`` on the console, waits so a human can read it, then exits."""
    return (f"#!ipxe\necho layerboot: {ipxe_quote(message)}\n"
            f"echo layerboot: leaving iPXE in {sleep} seconds\nsleep {sleep}\nexit 1\n")


def _text_lines(data: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _text_lines(value, indent + "  ")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}:")
            for item in value:
                lines.append(f"{indent}  - " + (json.dumps(item, sort_keys=True) if isinstance(item, dict) else str(item)))
        else:
            lines.append(f"{indent}{key}: {'-' if value is None else value}")
    return lines


def _html(title: str, data: dict[str, Any]) -> str:
    def render(value: Any) -> str:
        if isinstance(value, dict):
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{render(v)}</td></tr>" for k, v in value.items())
            return f"<table>{rows}</table>"
        if isinstance(value, list):
            return "<ul>" + "".join(f"<li>{render(v)}</li>" for v in value) + "</ul>"
        return html.escape("-" if value is None else str(value))

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{render(data)}</body></html>\n")


def respond(request: web.BaseRequest, title: str, data: dict[str, Any], *, status: int = 200,
            headers: dict[str, str] | None = None) -> web.Response:
    """Render ``data`` (a flat-ish dict; 'message' is the line an iPXE console shows) for this client."""
    kind = client_kind(request)
    if kind == "ipxe":
        message = str(data.get("error") or data.get("message") or title)
        if status < 400:
            body = "#!ipxe\n" + "".join(f"echo {ipxe_quote(line)}\n" for line in [title, *_text_lines(data)])
        else:
            body = ipxe_refusal(message)
        keep_status = request.path.startswith("/objects/")
        return web.Response(text=body, status=status if keep_status else 200, content_type="text/plain",
                            headers=headers)
    if kind == "json":
        return web.Response(text=strictjson.dumps(data) + "\n", status=status,
                            content_type="application/json", headers=headers)
    if kind == "html":
        return web.Response(text=_html(title, data), status=status, content_type="text/html", headers=headers)
    if status >= 400:
        lines = [f"layerboot: error: {data.get('error')}"] + ([f"layerboot: hint: {data['hint']}"] if data.get("hint") else [])
    else:
        lines = [title, *_text_lines(data)]
    return web.Response(text="\n".join(lines) + "\n", status=status, content_type="text/plain", headers=headers)


def error(request: web.BaseRequest, status: int, message: str, *, hint: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    data: dict[str, Any] = {"status": status, "error": message}
    if hint:
        data["hint"] = hint
    return respond(request, f"layerboot: {message}", data, status=status, headers=headers)
