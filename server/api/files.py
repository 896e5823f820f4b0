"""``GET /files/{id}/{name}``: the outputs, at capability URLs (no key needed to read one)."""

from __future__ import annotations

from aiohttp import web

from server.api.described import operation
from server.media.outputs import OutputStore, content_type_of


def file_route(store: OutputStore) -> web.RouteDef:
    @operation(
        "An output file (capability URL: no key needed)",
        ok="*/*",  # the type its name's extension gives (image/png, video/mp4, ...)
        responses={200: "The file, typed by its extension", 404: "Unknown file"},
        tag="files",
    )
    async def serve(request: web.Request) -> web.FileResponse:
        path = store.path_of(request.match_info["request_id"], request.match_info["name"])
        return web.FileResponse(path, headers={"Content-Type": content_type_of(path.name)})

    return web.get("/files/{request_id:[0-9a-f-]+}/{name}", serve)  # uuid4 ids: not /files/upload
