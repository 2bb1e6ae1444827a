"""The browser playground: a static page (index.html, playground.js, playground.css in this package) served at
/playground/, plus /playground/info.json (voices, defaults and the protocol's constants, from the server).

No build step: the files are plain HTML, CSS and one ES module, read once at startup. The page speaks the
public WebSocket protocol (/ws/tts) like any other client; with an API key it authenticates through the
`base64url.bearer.orpheus-tts.<key>` subprotocol (protocol.py, checked in serve/ws.py), so the key is in no URL
and no log.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from typing import Any

from aiohttp import web

FILES = {"index.html": "text/html", "playground.js": "text/javascript", "playground.css": "text/css"}
# The page loads only its own files and talks only to its own server.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_files() -> dict[str, bytes]:
    root = importlib.resources.files(__package__)
    return {name: (root / name).read_bytes() for name in FILES}


def add_playground_routes(app: web.Application, info: Callable[[], dict[str, Any] | None]) -> None:
    """`info()` is what the page needs from the server, or None while the model is loading."""
    files = load_files()

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/playground/")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type=FILES[name], charset="utf-8", headers=HEADERS)

    async def info_json(request: web.Request) -> web.Response:
        body = info()
        if body is None:
            return web.json_response({"status": "loading"}, status=503, headers={"Retry-After": "1"})
        return web.json_response(body, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", to_page)
    app.router.add_get("/playground", to_page)
    app.router.add_get("/playground/info.json", info_json)
    app.router.add_get("/playground/", static)
    app.router.add_get("/playground/{name}", static)
