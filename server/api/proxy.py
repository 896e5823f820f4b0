"""The editor's view of its ComfyUI worker: HTTP and WebSocket relayed to it, and only what the editor
needs. Reads (GET/HEAD: the frontend's files, node and model lists, history, outputs, user files) pass;
of the writes only uploads to the input folder and files in the user directory pass. Runs, interrupts
and queue edits are darkroom's (``api/editor.py``); anything else is refused with 403.

The worker sees loopback requests without the browser's Origin or cookies (ComfyUI refuses a loopback
Host with a foreign Origin), and never the browser's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from server.api.security_headers import SNIFF_BYTES, relayed_headers, user_file_headers
from server.engine.supervisor import Supervisor
from server.errors import ForbiddenError, WorkerUnavailableError
from server.workflows.editor import EDITOR_WORKER

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 16
# Writes the editor makes that only touch the worker's input folder or the user directory.
ALLOWED_WRITES = (
    ("POST", re.compile(r"^api/upload/(image|mask)$")),
    ("POST", re.compile(r"^api/userdata/[^/]+$")),
    ("DELETE", re.compile(r"^api/userdata/[^/]+$")),
    ("POST", re.compile(r"^api/userdata/[^/]+/move/[^/]+$")),
    ("POST", re.compile(r"^api/v2/userdata/[^/]+$")),
    ("POST", re.compile(r"^api/settings(/[^/]+)?$")),
)
# What ComfyUI serves from its folders (inputs, outputs, user files): user content, whatever its name.
USER_FILES = re.compile(r"^(api/)?(view|userdata/[^/]+)$")
# User data the editor reads by its type (workflows, settings, the user's stylesheet): no script runs in
# either, so it keeps ComfyUI's type (with nosniff and the sandbox CSP); anything else there goes by bytes.
_PASSIVE_USER_DATA = ("application/json", "text/css")
_FORWARDED_REQUEST_HEADERS = (
    "Accept", "Accept-Language", "Content-Type", "Comfy-User", "If-None-Match", "If-Modified-Since", "Range",
)  # fmt: skip
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-authenticate", "te", "trailer"}
)


def check_allowed(method: str, tail: str) -> None:
    """403 unless the editor may make this request of its worker."""
    if method in ("GET", "HEAD"):
        return
    if any(method == allowed and pattern.match(tail) for allowed, pattern in ALLOWED_WRITES):
        return
    raise ForbiddenError(
        f"{method} /editor/{tail} is not relayed to ComfyUI: the editor needs only uploads and files in "
        "the user directory; runs, interrupts and queue changes go through darkroom's queue."
    )


class EditorProxy:
    """Relays the editor's requests to the editor worker; open and closed with the app."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.session: aiohttp.ClientSession | None = None
        self.sockets: dict[str, set[web.WebSocketResponse]] = {}  # the editor's sockets by client id

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(auto_decompress=False, trust_env=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def worker_url(self) -> str:
        workers = self.supervisor.workers
        if len(workers) <= EDITOR_WORKER or not workers[EDITOR_WORKER].ready:
            raise WorkerUnavailableError("The editor's ComfyUI worker is not ready yet; reload in a moment.")
        url: str = workers[EDITOR_WORKER].base_url
        return url.rstrip("/")

    async def forward(self, request: web.Request, tail: str) -> web.StreamResponse:
        """Send the request on to the worker and stream its answer back; a user file (``USER_FILES``)
        typed by its bytes, as darkroom serves its own (``security_headers``)."""
        assert self.session is not None, "EditorProxy.open() was not called"
        user_file = request.method in ("GET", "HEAD") and USER_FILES.match(tail) is not None
        headers = {h: request.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in request.headers}
        if user_file:
            headers.pop("Range", None)  # the whole file, so its first bytes decide its type
        body = await request.read() if request.can_read_body else None
        url = URL(f"{self.worker_url()}/{tail}", encoded=True)  # ``tail`` is already %-encoded
        try:
            async with self.session.request(
                request.method, url, params=request.query, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                return await _relay(request, upstream, tail, user_file=user_file and upstream.status == 200)
        except aiohttp.ClientError as e:
            raise WorkerUnavailableError(f"The editor's ComfyUI worker did not answer: {e}") from e

    async def relay_socket(self, request: web.Request) -> web.WebSocketResponse:
        """The editor's WebSocket, joined to the worker's under the same client id."""
        assert self.session is not None, "EditorProxy.open() was not called"
        client_id = request.query.get("clientId", "")
        url = f"{self.worker_url()}/ws"
        upstream = await self.session.ws_connect(url, params={"clientId": client_id} if client_id else None)
        browser = web.WebSocketResponse(max_msg_size=0)
        await browser.prepare(request)
        self.sockets.setdefault(client_id, set()).add(browser)
        try:
            await _pump_both(browser, upstream)
        finally:
            self.sockets.get(client_id, set()).discard(browser)
            await upstream.close()
            await browser.close()
        return browser

    async def tell(self, client_id: str, message: dict[str, Any]) -> None:
        """Send a message to the editor's sockets of ``client_id`` as if the worker had (a darkroom error)."""
        for ws in list(self.sockets.get(client_id, ())):
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await ws.send_json(message)


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, tail: str, *, user_file: bool
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if name.lower() not in _HOP_BY_HOP:
            response.headers.add(name, value)
    head = b""
    if user_file:  # typed by its first bytes, whatever ComfyUI guessed from the name
        while len(head) < SNIFF_BYTES and (chunk := await upstream.content.read(SNIFF_BYTES - len(head))):
            head += chunk
        declared = upstream.headers.get("Content-Type", "")
        for name in ("Content-Type", "Content-Disposition"):
            response.headers.popall(name, None)
        name = request.query.get("filename") or unquote(tail.rsplit("/", 1)[-1])
        response.headers.update(user_file_headers(head, name))
        if declared.startswith(_PASSIVE_USER_DATA) and "userdata" in tail:
            response.headers["Content-Type"] = declared  # what the editor reads as such: no script
            response.headers.popall("Content-Disposition", None)
    else:
        response.headers.update(relayed_headers(tail, upstream.headers.get("Content-Type", "")))
    await response.prepare(request)
    if head:
        await response.write(head)
    async for chunk in upstream.content.iter_chunked(_CHUNK_BYTES):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _pump_both(browser: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Copy frames both ways until either side closes."""
    tasks = [asyncio.create_task(_copy(upstream, browser)), asyncio.create_task(_copy(browser, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _copy(source: Any, sink: Any) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break
