"""``GET /static/{name}``: the stylesheets and scripts darkroom's pages share (``pages/*.css``, ``*.js``)
and the vendored libraries (``pages/vendor/<library>/``, as ``<library>/<file>``), read once at start-up:
only these names are served, whatever the path asks. Public (they hold no secret; the editor's extension
imports one); revalidated by ETag, so a new release is picked up at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from server.api.described import operation
from server.errors import NotFoundError

_DIR = Path(__file__).parent / "pages"
_TYPES = {".css": "text/css", ".js": "text/javascript"}


def _load() -> dict[str, tuple[bytes, str, str]]:
    assets = {}
    for path in sorted([*_DIR.glob("*"), *(_DIR / "vendor").glob("*/*")]):
        if path.suffix in _TYPES:
            data, name = path.read_bytes(), path.relative_to(_DIR).as_posix().removeprefix("vendor/")
            assets[name] = (data, _TYPES[path.suffix], '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
    return assets


_ASSETS = _load()


@operation(
    summary="The pages' shared stylesheets and scripts",
    ok="text/javascript",
    responses={200: "The file", 304: "Not modified", 404: "Unknown file"},
    tag="pages",
)
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
    return [web.get("/static/{name:.+}", serve)]
