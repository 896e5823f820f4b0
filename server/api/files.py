"""``GET /files/{id}/{name}``: the outputs, at capability URLs (no key needed to read one).

With a shared object store (``DARKROOM_STORAGE_URL``) every host serves every file: the body streams
from the store as it arrives (never whole in memory), a single byte range is passed on to the store.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.api.described import operation
from server.api.security_headers import SNIFF_BYTES, user_file_headers
from server.errors import DarkroomError, NotFoundError
from server.media.objects import ObjectStore
from server.media.outputs import OutputStore, output_key

# What /files and /files/uploads answer besides the whole file (a local file's Range is aiohttp's).
SERVED_RESPONSES: dict[int, str | tuple[str, str]] = {
    200: "The file: a recognised image, video or audio type by its bytes, else an attachment",
    206: ("One byte range of the file (a Range header)", "*/*"),
    404: "Unknown file",
    416: "The range starts past the end of the file, or is not one byte range",
    503: "The shared storage (DARKROOM_STORAGE_URL) is unavailable; retry",
}
# HTTP's Range (RFC 9110): what it can be is the RFC's; what this file can serve is a refusal no schema
# can express (past its end), as is more than one range (not served here).
RANGE_HEADER = {
    "Range": "One byte range, bytes=start-[end] or bytes=-suffix (206); past the end of the file, or several "
    "ranges, get 416"
}
RANGE_REFUSALS = {416: ("range_not_satisfiable",)}


def file_route(store: OutputStore) -> web.RouteDef:
    @operation(
        "An output file (capability URL: no key needed)",
        ok="*/*",  # the type its bytes show (image/png, video/mp4, ...), else an attachment
        responses=SERVED_RESPONSES,
        headers=RANGE_HEADER,
        refusals=RANGE_REFUSALS,
        tag="files",
    )
    async def serve(request: web.Request) -> web.StreamResponse:
        request_id, name = request.match_info["request_id"], request.match_info["name"]
        if store.objects is not None:
            return await serve_object(request, store.objects, output_key(request_id, name), name)
        return local_file(request, store.path_of(request_id, name))

    return web.get("/files/{request_id:[0-9a-f-]+}/{name}", serve)  # uuid4 ids: not /files/upload


def local_file(request: web.Request, path: Path) -> web.FileResponse:
    """aiohttp's FileResponse for ``path``, typed by its first bytes; a Range it would refuse with an empty
    416 (past the end, or not one byte range) gets our error body instead, as from a shared store."""
    stat, if_range = path.stat(), request.if_range
    size_bytes = stat.st_size
    if "Range" in request.headers and (if_range is None or stat.st_mtime <= if_range.timestamp()):
        try:
            start = request.http_range.start
        except ValueError as e:
            raise _unsatisfiable(
                f"Range {request.headers['Range']!r} is not one byte range ({e})", size_bytes
            ) from e
        if start is not None and (start if start >= 0 else max(start + size_bytes, 0)) >= size_bytes:
            raise _unsatisfiable(f"The range asked for is past the end of {path.name}", size_bytes)
    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES)
    return web.FileResponse(path, headers=user_file_headers(head, path.name))


def _unsatisfiable(message: str, size_bytes: int) -> DarkroomError:
    return DarkroomError(
        f"{message}: send bytes=start-[end] or bytes=-suffix within its {size_bytes} bytes",
        status=416, code="range_not_satisfiable", headers={"Content-Range": f"bytes */{size_bytes}"},
    )  # fmt: skip


async def serve_object(request: web.Request, objects: ObjectStore, key: str, name: str) -> web.StreamResponse:
    """Stream the object at ``key``, typed by its first bytes (``security_headers``); a Range header gets
    a 206."""
    info = await objects.head(key)
    if info is None:
        raise NotFoundError(f"No file {key}")
    head = await objects.read(key, byte_range=f"bytes=0-{SNIFF_BYTES - 1}") if info.size_bytes else b""
    headers = {**user_file_headers(head, name), "Accept-Ranges": "bytes"}
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Length": str(info.size_bytes)})
    body = await objects.get(key, byte_range=request.headers.get("Range"))
    if body.content_range:
        headers["Content-Range"] = body.content_range
    response = web.StreamResponse(status=206 if body.content_range else 200, headers=headers)
    response.content_length = body.size_bytes
    try:
        await response.prepare(request)
        async for chunk in body.chunks:
            await response.write(chunk)
    finally:
        await body.chunks.aclose()
    await response.write_eof()
    return response
