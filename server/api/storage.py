"""fal's storage API, so ``fal_client.upload*`` and the JS ``storage.upload`` work against this server.

Two flows (fal-api.md section 7), both ending in a file under ``<data_dir>/uploads/<id>/<name>`` (or
``uploads/<id>/<name>`` in the shared object store, ``DARKROOM_STORAGE_URL``) that is served at
``/files/uploads/<id>/<name>`` (a capability URL: 128 random bits, no key needed to read it):

- ``POST /storage/upload/initiate`` ``{file_name, content_type}`` -> ``{upload_url, file_url}``, then the
  client PUTs the raw bytes to ``upload_url`` (the same path; it accepts one PUT, for an hour).
- Python's v3 flow: ``POST /storage/auth/token?storage_type=fal-cdn-v3`` -> a short-lived upload token,
  then ``POST {CDN_URL}/files/upload`` with ``Authorization: Bearer <token>`` and the raw bytes ->
  ``{access_url}``. Point ``fal_client.client.REST_URL`` and ``CDN_URL`` at this server's root.

Multipart uploads, for big files (``server/media/multipart.py`` keeps their parts; ``upload_max_bytes``
caps the whole file):

- Python (> 100 MB): ``POST {base_url}/files/upload/multipart`` (upload token, ``X-Fal-File-Name``) ->
  ``{access_url, uploadId}``; ``PUT {access_url}/multipart/{uploadId}/{n}`` answers an ``ETag``;
  ``POST {access_url}/multipart/{uploadId}/complete`` ``{"parts": [{partNumber, etag}]}``.
- JS (> 90 MB): ``POST /storage/upload/initiate-multipart`` -> ``{upload_url, file_url}`` with
  ``upload_url = {file_url}/multipart/{uploadId}``, so its ``PUT {upload_url}/{n}`` (answering JSON
  ``{partNumber, etag}``) and ``POST {upload_url}/complete`` are the same routes.

Python's ``fal`` (gcs) fallback has no multipart variant: it sends any size as one initiate + PUT.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server.api import auth
from server.api.described import operation
from server.api.files import RANGE_HEADER, RANGE_REFUSALS, SERVED_RESPONSES, local_file, serve_object
from server.api.params import Param
from server.api.request import body_chunks, read_model
from server.api.state import KEYS, MULTIPART, SETTINGS, UPLOADS
from server.errors import AuthError, InputError
from server.json_types import JsonInt
from server.media.multipart import MAX_PARTS, parse_part_number, quoted_etag
from server.media.uploads import safe_name, upload_key
from server.security.keyring import credentials

logger = logging.getLogger(__name__)

STORAGE_TYPE = Param("fal's storage names (all served here)", enum=("fal-cdn-v3", "fal-cdn", "gcs"))
UPLOAD_TOKEN_SCOPE = "storage:upload"
UPLOAD_TOKEN_TTL_S = 3600.0


class TokenBody(BaseModel):
    """fal's storage token request: an object, its fields not used."""

    model_config = ConfigDict(strict=True, extra="allow")


class InitiateBody(BaseModel):
    model_config = ConfigDict(strict=True)
    file_name: str | None = None
    content_type: str = "application/octet-stream"


class PartRef(BaseModel):
    model_config = ConfigDict(strict=True)
    part_number: JsonInt = Field(alias="partNumber", ge=1, le=MAX_PARTS)
    etag: str


class CompleteBody(BaseModel):
    model_config = ConfigDict(strict=True)
    parts: list[PartRef] = Field(min_length=1, max_length=MAX_PARTS)


PART_NUMBER = r"^([1-9][0-9]{0,3}|10000)$"  # 1..MAX_PARTS, as parse_part_number takes it
_MULTIPART_PATH = "/files/uploads/{upload_id}/{name}/multipart/{multipart_id}"


def routes() -> list[web.RouteDef]:
    """fal's storage routes: initiate + PUT, the CDN upload, and both multipart flows."""
    return [
        web.post("/storage/auth/token", auth_token),
        web.post("/storage/upload/initiate", initiate),
        web.post("/storage/upload/initiate-multipart", initiate_multipart),
        web.post("/files/upload", cdn_upload),
        web.post("/files/upload/multipart", cdn_multipart),
        web.put("/files/uploads/{upload_id}/{name}", put_upload),
        web.get("/files/uploads/{upload_id}/{name}", serve_upload),
        # Not "complete": its POST route would share the path, and OPTIONS would list PUT for it too.
        web.put(_MULTIPART_PATH + "/{part:(?!complete$)[^/]+}", put_part),
        web.post(_MULTIPART_PATH + "/complete", complete_multipart),
    ]


def base_url(request: web.Request) -> str:
    """The server's root as the client sees it (``public_url`` if set); https when serving TLS."""
    public_url = request.app[SETTINGS].public_url
    return public_url.rstrip("/") if public_url else f"{request.scheme}://{request.host}"


def _file_url(request: web.Request, upload_id: str, name: str) -> str:
    """Where the file is read (``files_url``'s host when set; uploads and parts go to ``_upload_url``)."""
    files_url = request.app[SETTINGS].files_url.rstrip("/")
    return f"{files_url or base_url(request)}/files/uploads/{upload_id}/{name}"


def _upload_url(request: web.Request, upload_id: str, name: str) -> str:
    return f"{base_url(request)}/files/uploads/{upload_id}/{name}"


def _check_storage_type(request: web.Request) -> None:
    STORAGE_TYPE.read("query", "storage_type", request.query)


async def _initiate_body(request: web.Request) -> InitiateBody:
    _check_storage_type(request)
    return await read_model(request, InitiateBody)


def _require_upload_credentials(request: web.Request) -> None:
    token = credentials(request.headers.get("Authorization"))
    has_token = token is not None and request.app[KEYS].token_scope(token) == UPLOAD_TOKEN_SCOPE
    if not (has_token or auth.has_valid_key(request)):
        raise AuthError("Missing or expired upload token: get one from POST /storage/auth/token.")


@operation(
    summary="A short-lived token for the CDN upload (fal's storage token)",
    body=TokenBody,
    responses={200: "The token", 422: "Invalid body or storage_type"},
    query={"storage_type": STORAGE_TYPE},
    tag="storage",
)
async def auth_token(request: web.Request) -> web.Response:
    """A short-lived token for ``POST /files/upload`` (fal's CDN v3 token)."""
    _check_storage_type(request)
    await read_model(request, TokenBody)
    token, expires_at = request.app[KEYS].issue_token(UPLOAD_TOKEN_SCOPE, UPLOAD_TOKEN_TTL_S)
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "base_url": base_url(request),
            # An explicit +00:00 offset: fal_client parses it with datetime.fromisoformat.
            "expires_at": datetime.fromtimestamp(expires_at, tz=UTC).isoformat(),
        }
    )


@operation(
    summary="Start an upload: a one-time upload URL and the file's URL",
    body=InitiateBody,
    responses={200: "upload_url and file_url", 422: "Invalid body or storage_type"},
    query={"storage_type": STORAGE_TYPE},
    tag="storage",
)
async def initiate(request: web.Request) -> web.Response:
    """Reserve an upload: ``{upload_url, file_url}``; the bytes come in a PUT to upload_url."""
    body = await _initiate_body(request)
    upload_id, name = request.app[UPLOADS].begin(body.file_name, body.content_type)
    return web.json_response(
        {"upload_url": _upload_url(request, upload_id, name), "file_url": _file_url(request, upload_id, name)}
    )


@auth.self_authenticating
@operation(
    summary="Send the bytes of an initiated upload (its one-time URL)",
    body="application/octet-stream",
    responses={
        200: "Stored",
        404: "Unknown or used upload URL",
        413: "Too large",
        507: "No room: storage quota or disk full",
    },
    schemes=("capability",),
    tag="storage",
)
async def put_upload(request: web.Request) -> web.Response:
    """The one PUT an initiated upload accepts: its id, from an authenticated initiate, is the credential."""
    store = request.app[UPLOADS]
    upload_id, name = request.match_info["upload_id"], request.match_info["name"]
    store.claim(upload_id, name)
    size = await store.receive(
        upload_id, name, body_chunks(request, request.app[SETTINGS]), declared_bytes=request.content_length
    )
    return web.json_response({"file_url": _file_url(request, upload_id, name), "file_size": size})


@auth.self_authenticating
@operation(
    summary="Upload a file in one request (fal's CDN upload)",
    body="application/octet-stream",
    responses={
        200: "The file's URL",
        413: "Larger than DARKROOM_UPLOAD_MAX_BYTES",
        422: "Invalid upload",
        507: "No room: storage quota or disk full",
    },
    schemes=("upload_token", "key"),
    tag="storage",
)
async def cdn_upload(request: web.Request) -> web.Response:
    """``POST /files/upload``: raw bytes with an upload token (or an API key) -> ``{access_url}``."""
    _require_upload_credentials(request)
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    store = request.app[UPLOADS]
    upload_id, name = store.begin(request.headers.get("X-Fal-File-Name"), content_type)
    store.claim(upload_id, name)
    size = await store.receive(
        upload_id, name, body_chunks(request, request.app[SETTINGS]), declared_bytes=request.content_length
    )
    url = _file_url(request, upload_id, name)
    return web.json_response(
        {"access_url": url, "file_name": name, "content_type": content_type, "file_size": size}
    )


@auth.self_authenticating
@operation(
    summary="Start a CDN multipart upload",
    responses={200: "The multipart upload", 400: "Invalid request"},
    schemes=("upload_token", "key"),
    tag="storage",
)
async def cdn_multipart(request: web.Request) -> web.Response:
    """Python's big-file flow: ``POST /files/upload/multipart`` (token or key): ``{access_url, uploadId}``."""
    _require_upload_credentials(request)
    if request.body_exists:
        raise InputError(
            "POST /files/upload/multipart takes no body: it answers {access_url, uploadId}; send the "
            "bytes in parts to PUT {access_url}/multipart/{uploadId}/{n}, then POST .../complete.",
            status=400,
            code="invalid_request",
        )
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    url, multipart_id = _begin_multipart(request, request.headers.get("X-Fal-File-Name"), content_type)
    return web.json_response({"access_url": url, "uploadId": multipart_id})


@operation(
    summary="Start a multipart upload",
    body=InitiateBody,
    responses={200: "The multipart upload's URLs", 422: "Invalid body or storage_type"},
    query={"storage_type": STORAGE_TYPE},
    tag="storage",
)
async def initiate_multipart(request: web.Request) -> web.Response:
    """JS's big-file flow: ``{upload_url, file_url}``; parts go to ``{upload_url}/{n}``, then ``complete``."""
    body = await _initiate_body(request)
    url, multipart_id = _begin_multipart(request, body.file_name, body.content_type)
    return web.json_response({"upload_url": f"{url}/multipart/{multipart_id}", "file_url": url})


def _begin_multipart(request: web.Request, file_name: str | None, content_type: str) -> tuple[str, str]:
    upload_id, name = secrets.token_hex(16), safe_name(file_name, content_type)
    multipart_id = request.app[MULTIPART].begin(upload_id, name)
    # The API's own URL, not files_url's: the parts go to it (Python's flow names the file by it too).
    return _upload_url(request, upload_id, name), multipart_id


def _multipart_ids(request: web.Request) -> tuple[str, str, str]:
    info = request.match_info
    return info["multipart_id"], info["upload_id"], info["name"]


@auth.self_authenticating
@operation(
    summary="One part of a multipart upload",
    body="application/octet-stream",
    responses={
        200: "The part's etag",
        400: "Invalid part number, or the upload is completed",
        404: "Unknown upload",
        413: "Too large",
        507: "No room: storage quota or disk full",
    },
    schemes=("capability",),
    refusals={400: ("invalid_part",)},
    path={"part": PART_NUMBER},
    tag="storage",
)
async def put_part(request: web.Request) -> web.Response:
    """One part (any order; a re-sent part replaces the earlier one): an ``ETag`` and ``{partNumber, etag}``.
    The multipart id, handed only to the client that started the upload, is the credential."""
    part_number = parse_part_number(request.match_info["part"])
    part = await request.app[MULTIPART].receive_part(
        *_multipart_ids(request),
        part_number,
        body_chunks(request, request.app[SETTINGS]),
        declared_bytes=request.content_length,
    )
    etag = quoted_etag(part.etag)
    return web.json_response(
        {"partNumber": part_number, "etag": etag, "size": part.size_bytes}, headers={"ETag": etag}
    )


@auth.self_authenticating
@operation(
    summary="Finish a multipart upload from its parts",
    body=CompleteBody,
    responses={
        200: "The file's URL",
        400: "Invalid or missing parts",
        404: "Unknown upload",
        422: "Invalid body",
        507: "No room: storage quota or disk full",
    },
    schemes=("capability",),
    refusals={400: ("invalid_part",)},
    tag="storage",
)
async def complete_multipart(request: web.Request) -> web.Response:
    """Join the listed parts into the upload's file, which appears whole at its URL."""
    body = await read_model(request, CompleteBody)
    multipart_id, upload_id, name = _multipart_ids(request)
    listed = [(part.part_number, part.etag) for part in body.parts]
    size = await request.app[MULTIPART].complete(multipart_id, upload_id, name, listed)
    url = _file_url(request, upload_id, name)
    return web.json_response({"access_url": url, "file_url": url, "file_size": size})


@operation(
    summary="An uploaded file (capability URL)",
    ok="*/*",  # the type its bytes show, else an attachment
    responses=SERVED_RESPONSES,
    headers=RANGE_HEADER,
    refusals=RANGE_REFUSALS,
    tag="storage",
)
async def serve_upload(request: web.Request) -> web.StreamResponse:
    """An uploaded file, by its capability URL (from the shared object store when there is one)."""
    store, upload_id, name = request.app[UPLOADS], request.match_info["upload_id"], request.match_info["name"]
    if store.objects is not None:
        return await serve_object(request, store.objects, upload_key(upload_id, name), name)
    return local_file(request, store.path_of(upload_id, name))
