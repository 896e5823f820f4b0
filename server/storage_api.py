"""fal's storage API, so ``fal_client.upload*`` and the JS ``storage.upload`` work against this server.

Two flows (fal-api.md section 7), both ending in a file under ``<data_dir>/uploads/<id>/<name>`` that is
served at ``/files/uploads/<id>/<name>`` (a capability URL: 128 random bits, no key needed to read it):

- ``POST /storage/upload/initiate`` ``{file_name, content_type}`` -> ``{upload_url, file_url}``, then the
  client PUTs the raw bytes to ``upload_url`` (the same path; it accepts one PUT, for an hour).
- Python's v3 flow: ``POST /storage/auth/token?storage_type=fal-cdn-v3`` -> a short-lived upload token,
  then ``POST {CDN_URL}/files/upload`` with ``Authorization: Bearer <token>`` and the raw bytes ->
  ``{access_url}``. Point ``fal_client.client.REST_URL`` and ``CDN_URL`` at this server's root.

Multipart uploads (Python > 100 MB, JS > 90 MB) are not implemented: ``upload_max_bytes`` caps one file.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from . import auth
from .errors import AuthError, InputError, NotFoundError, RequestValidationError
from .files import content_type_of
from .keys import SETTINGS
from .settings import Settings

logger = logging.getLogger(__name__)

STORAGE_TYPES = frozenset({"fal-cdn-v3", "fal-cdn", "gcs"})
UPLOAD_TOKEN_SCOPE = "storage:upload"
UPLOAD_TOKEN_TTL_S = 3600.0
PENDING_TTL_S = 3600.0
_CHUNK_BYTES = 1 << 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
_ID = re.compile(r"^[0-9a-f]{32}$")


class InitiateBody(BaseModel):
    file_name: str | None = None
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Pending:
    name: str
    content_type: str
    expires_at: float


def safe_name(file_name: str | None, content_type: str) -> str:
    """A file name safe to store and put in a URL, with an extension that matches the content type."""
    base = re.split(r"[/\\]", file_name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:120].removesuffix(".part") or "upload"
    media_type = content_type.split(";")[0].strip().lower()
    extension = mimetypes.guess_extension(media_type) or ""
    if extension and mimetypes.guess_type(base)[0] != media_type:
        base += extension
    return base


class UploadStore:
    """Owns ``<data_dir>/uploads``: one folder per upload id; a file appears only once complete."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._pending: dict[str, Pending] = {}

    def begin(self, file_name: str | None, content_type: str) -> tuple[str, str]:
        """Reserve an upload id for one later PUT; returns (id, stored name)."""
        now = time.time()
        self._pending = {k: p for k, p in self._pending.items() if p.expires_at > now}
        upload_id = secrets.token_hex(16)
        name = safe_name(file_name, content_type)
        self._pending[upload_id] = Pending(name, content_type, now + PENDING_TTL_S)
        return upload_id, name

    def claim(self, upload_id: str, name: str) -> Pending:
        """The reservation for a PUT, removed so the URL accepts only one; 404 if none or expired."""
        pending = self._pending.pop(upload_id, None)
        if pending is None or pending.name != name or pending.expires_at <= time.time():
            raise NotFoundError(
                f"No pending upload {upload_id}/{name}: initiate one first (it lasts an hour)"
            )
        return pending

    async def receive(self, request: web.Request, upload_id: str, name: str) -> int:
        """Stream the request body to the upload's file, enforcing the size limit; returns its size."""
        declared = request.content_length
        if declared is not None and declared > self.max_bytes:
            raise self._too_large(declared)
        path = self._path(upload_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        size = 0
        try:
            with partial.open("wb") as out:
                async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large(size)
                    out.write(chunk)
            partial.rename(path)
        finally:
            partial.unlink(missing_ok=True)
        logger.info("upload %s/%s: %d bytes", upload_id, name, size)
        return size

    def path_of(self, upload_id: str, name: str) -> Path:
        path = self._path(upload_id, name)
        if not path.is_file():
            raise NotFoundError(f"No uploaded file {upload_id}/{name}")
        return path

    def _path(self, upload_id: str, name: str) -> Path:
        if not (_ID.match(upload_id) and _NAME.match(name)) or name.endswith(".part"):
            raise NotFoundError(f"No uploaded file {upload_id}/{name}")
        return self.root / upload_id / name

    def _too_large(self, size: int) -> InputError:
        return InputError(
            f"Upload is too large: {size} bytes or more, the limit is {self.max_bytes} "
            "(DARKROOM_UPLOAD_MAX_BYTES); multipart uploads are not supported.",
            status=413,
            code="file_too_large",
        )


UPLOADS = web.AppKey("uploads", UploadStore)


def setup(app: web.Application, settings: Settings) -> None:
    """Register the storage routes and the upload store."""
    app[UPLOADS] = UploadStore(settings.uploads_path, settings.upload_max_bytes)
    app.router.add_routes(
        [
            web.post("/storage/auth/token", auth_token),
            web.post("/storage/upload/initiate", initiate),
            web.post("/files/upload", cdn_upload),
            web.put("/files/uploads/{upload_id}/{name}", put_upload),
            web.get("/files/uploads/{upload_id}/{name}", serve_upload),
        ]
    )


def base_url(request: web.Request) -> str:
    """The server's root as the client sees it (``public_url`` if set); https when serving TLS."""
    public_url = request.app[SETTINGS].public_url
    return public_url.rstrip("/") if public_url else f"{request.scheme}://{request.host}"


def _file_url(request: web.Request, upload_id: str, name: str) -> str:
    return f"{base_url(request)}/files/uploads/{upload_id}/{name}"


def _check_storage_type(request: web.Request) -> None:
    storage_type = request.query.get("storage_type")
    if storage_type is not None and storage_type not in STORAGE_TYPES:
        raise RequestValidationError(
            [
                {
                    "loc": ["query", "storage_type"],
                    "msg": f"Input should be one of {', '.join(sorted(STORAGE_TYPES))}",
                    "type": "enum",
                    "input": storage_type,
                }
            ]
        )


async def _json_body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"Body is not valid JSON: {e}", "type": "json_invalid"}]
        ) from e


async def auth_token(request: web.Request) -> web.Response:
    """A short-lived token for ``POST /files/upload`` (fal's CDN v3 token)."""
    _check_storage_type(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise RequestValidationError(
            [{"loc": ["body"], "msg": "Input should be an object", "type": "dict_type"}]
        )
    token, expires_at = request.app[auth.KEYS].issue_token(UPLOAD_TOKEN_SCOPE, UPLOAD_TOKEN_TTL_S)
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "base_url": base_url(request),
            # An explicit +00:00 offset: fal_client parses it with datetime.fromisoformat.
            "expires_at": datetime.fromtimestamp(expires_at, tz=UTC).isoformat(),
        }
    )


async def initiate(request: web.Request) -> web.Response:
    """Reserve an upload: ``{upload_url, file_url}``; the bytes come in a PUT to upload_url."""
    _check_storage_type(request)
    try:
        body = InitiateBody.model_validate(await _json_body(request))
    except ValidationError as e:
        raise RequestValidationError.from_pydantic(e) from e
    upload_id, name = request.app[UPLOADS].begin(body.file_name, body.content_type)
    url = _file_url(request, upload_id, name)
    return web.json_response({"upload_url": url, "file_url": url})


@auth.self_authenticating
async def put_upload(request: web.Request) -> web.Response:
    """The one PUT an initiated upload accepts: its id, from an authenticated initiate, is the credential."""
    store = request.app[UPLOADS]
    upload_id, name = request.match_info["upload_id"], request.match_info["name"]
    store.claim(upload_id, name)
    size = await store.receive(request, upload_id, name)
    return web.json_response({"file_url": _file_url(request, upload_id, name), "file_size": size})


@auth.self_authenticating
async def cdn_upload(request: web.Request) -> web.Response:
    """``POST /files/upload``: raw bytes with an upload token (or an API key) -> ``{access_url}``."""
    token = auth.credentials(request.headers.get("Authorization"))
    has_token = token is not None and request.app[auth.KEYS].token_scope(token) == UPLOAD_TOKEN_SCOPE
    if not (has_token or auth.has_valid_key(request)):
        raise AuthError("Missing or expired upload token: get one from POST /storage/auth/token.")
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    store = request.app[UPLOADS]
    upload_id, name = store.begin(request.headers.get("X-Fal-File-Name"), content_type)
    store.claim(upload_id, name)
    size = await store.receive(request, upload_id, name)
    url = _file_url(request, upload_id, name)
    return web.json_response(
        {"access_url": url, "file_name": name, "content_type": content_type, "file_size": size}
    )


async def serve_upload(request: web.Request) -> web.FileResponse:
    """An uploaded file, by its capability URL."""
    path = request.app[UPLOADS].path_of(request.match_info["upload_id"], request.match_info["name"])
    return web.FileResponse(path, headers={"Content-Type": content_type_of(path.name)})
