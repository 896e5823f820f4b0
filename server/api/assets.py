"""``GET /static/{name}``: the stylesheet and scripts darkroom's pages share (``pages/*.css``, ``*.js``),
read once at start-up. Public (they hold no secret; the editor's extension imports one); revalidated by
ETag, so a new release is picked up at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from server.errors import NotFoundError

_DIR = Path(__file__).parent / "pages"
_TYPES = {".css": "text/css", ".js": "text/javascript"}


def _load() -> dict[str, tuple[bytes, str, str]]:
    assets = {}
    for path in sorted(_DIR.iterdir()):
        if path.suffix in _TYPES:
            data = path.read_bytes()
            assets[path.name] = (data, _TYPES[path.suffix], '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
    return assets


_ASSETS = _load()


async def serve(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise NotFoundError(f"No static file {name!r}; there are: {', '.join(_ASSETS)}")
    data, content_type, etag = _ASSETS[name]
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=content_type, charset="utf-8", headers=headers)


def routes() -> list[web.RouteDef]:
    return [web.get("/static/{name}", serve)]
