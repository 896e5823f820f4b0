"""ComfyUI's browser editor at ``/editor/``, behind darkroom's keys, its runs in darkroom's queue.

``GET /editor/login`` is a sign-in page: a key posted there becomes a session cookie
(``server.security.sessions``); ``POST /editor/logout`` ends it. Without a session ``/editor/`` shows
the sign-in page and every other editor route answers 401 (open access needs no sign-in).

The editor's page, API and socket are relayed to the editor's worker (``api/proxy.py``), except what
touches runs: ``POST /editor/api/prompt`` queues a ``darkroom/editor`` request (it runs on the editor's
worker when its turn comes, in order with API requests, and the worker sends its events to the editor
itself); ``/editor/api/interrupt`` and ``/editor/api/queue`` cancel editor runs only, never API ones.
"""

from __future__ import annotations

import asyncio
import html
import logging
import string
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.api.access import requires
from server.api.auth import require_browser_or_key, self_authenticating, signed_in
from server.api.described import operation
from server.api.proxy import check_allowed
from server.api.request import base_url, own_origins, read_json, read_model
from server.api.state import EDITOR, ENDPOINTS, HUB, KEYS, QUEUE, SETTINGS
from server.api.streams import endless
from server.queue.store import JobStatus
from server.security import sessions
from server.security.roles import Role
from server.workflows.editor import EDITOR_APP, EditorRun

logger = logging.getLogger(__name__)
_OWN = "login|logout|ws|user\\.css|api/prompt|api/interrupt|api/queue"
_RELAYED = rf"(?!(?:{_OWN})$).+"


class SignIn(BaseModel):
    """The sign-in form."""

    key: str = Field(description="One of this server's API keys")
    next: str = Field(default="/editor/", description="Where to go after signing in (a path here)")


class Interrupt(BaseModel):
    """The editor's interrupt: its running prompt, or the one named."""

    model_config = ConfigDict(strict=True)
    prompt_id: str | None = None


class QueueEdit(BaseModel):
    """The editor's queue panel: prompts to delete, or all queued ones cleared."""

    model_config = ConfigDict(strict=True)
    delete: list[str] = Field(default_factory=list)
    clear: bool = False


def routes() -> list[web.RouteDef]:
    return [
        web.get("/editor", to_editor),
        web.get("/editor/login", login_page),
        web.post("/editor/login", login),
        web.post("/editor/logout", logout),
        web.get("/editor/", index),
        web.get("/editor/ws", socket),
        # Reads of these two are ComfyUI's (the frontend polls them): relayed beside darkroom's POST.
        web.post("/editor/api/prompt", queue_prompt),
        web.get("/editor/api/prompt", relay),
        web.post("/editor/api/interrupt", interrupt),
        web.post("/editor/api/queue", edit_queue),
        web.get("/editor/api/queue", relay),
        web.get("/editor/user.css", user_css),
        # Everything else under /editor/ (not darkroom's own paths above, so a method they do not take
        # is a 405 naming theirs) in the methods the relay passes (``proxy.ALLOWED_WRITES``).
        *(web.route(method, f"/editor/{{tail:{_RELAYED}}}", relay) for method in ("GET", "POST", "DELETE")),
        # The files the frontend asks for by an absolute path: its favicons (one per progress step).
        web.get(r"/assets/{path:favicon\.ico|images/favicon_progress_16x16/frame_[0-9]+\.png}", favicon),
        web.get("/favicon.ico", no_favicon),  # asked for by every tab, the sign-in page's too
    ]


@self_authenticating
@operation(summary="The editor (redirect)", responses={303: "To /editor/"}, schemes=(), tag="editor")
async def to_editor(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/editor/")


def _next(value: object) -> str:
    """Where sign-in leads: a path on this server (``?next=/dashboard``), the editor otherwise."""
    text = str(value or "")
    return text if text.startswith("/") and not text.startswith("//") and "\\" not in text else "/editor/"


@self_authenticating
@operation(
    summary="The sign-in page",
    ok="text/html",
    responses={200: "The page", 303: "Already signed in"},
    query={"next": "Where to go after signing in (a path here)"},
    schemes=(),
    tag="editor",
)
async def login_page(request: web.Request) -> web.Response:
    if signed_in(request):
        raise web.HTTPSeeOther(_next(request.query.get("next")))
    return _page(next_path=_next(request.query.get("next")))


@self_authenticating
@operation(
    summary="Sign in with an API key (form post): a session cookie",
    body=("application/x-www-form-urlencoded", SignIn),
    ok="text/html",
    responses={
        303: "Signed in",
        401: ("Not a key of this server: the page again", "text/html"),
        403: ("Not from darkroom's page", "text/html"),
    },
    schemes=(),
    tag="editor",
)
async def login(request: web.Request) -> web.Response:
    """A key from the form becomes a session cookie; a wrong key shows the page again (401)."""
    if not sessions.same_origin(request.method, request.headers, own_origins(request, request.app[SETTINGS])):
        return _page("This sign-in did not come from darkroom's own page.", status=403)
    form = await request.post()
    key, next_path = str(form.get("key", "")).strip(), _next(form.get("next"))
    keys = request.app[KEYS]
    if (caller := keys.caller(key)) is None:
        logger.info("editor sign-in refused from %s", request.remote)
        return _page("That is not one of this server's API keys.", status=401, next_path=next_path)
    ttl_s = request.app[SETTINGS].session_ttl_s
    token, _ = sessions.issue(keys, ttl_s, caller)
    response = web.HTTPSeeOther(next_path)
    sessions.set_cookie(response, token, secure=request.secure, max_age_s=ttl_s)
    raise response


@self_authenticating
@operation(
    summary="Sign out",
    ok="text/html",
    responses={303: "Signed out", 403: ("Not from darkroom's page", "text/html")},
    schemes=(),
    tag="editor",
)
async def logout(request: web.Request) -> web.Response:
    if not sessions.same_origin(request.method, request.headers, own_origins(request, request.app[SETTINGS])):
        return _page("This sign-out did not come from darkroom's own page.", status=403)
    response = web.HTTPSeeOther("/editor/login")
    response.del_cookie(sessions.COOKIE, path="/")
    raise response


@self_authenticating
@operation(
    summary="ComfyUI's editor (its page, relayed)",
    ok="text/html",
    responses={200: "The editor", 303: "Not signed in: the sign-in page"},
    schemes=(),
    tag="editor",
)
@requires(Role.DEVELOPER)
async def index(request: web.Request) -> web.StreamResponse:
    """The editor itself when signed in, else the sign-in page."""
    if not signed_in(request):
        raise web.HTTPSeeOther("/editor/login")
    _require_session(request)  # a runner's session may not edit
    return await request.app[EDITOR].forward(request, "")


def _require_session(request: web.Request) -> None:
    require_browser_or_key(request, page="/editor/")


@self_authenticating
@operation(
    summary="The editor's own API and files, relayed to worker 0 (reads, uploads, user files)",
    body="application/octet-stream",  # ComfyUI's own bodies (uploads, user files), passed on as they are
    ok="*/*",
    responses={
        200: "ComfyUI's answer",
        400: ("ComfyUI refused it: its own body", "*/*"),
        401: "Not signed in",
        403: "Not allowed through the relay",
        404: ("ComfyUI has no such path", "*/*"),
        405: ("ComfyUI does not take this method there", "*/*"),
        503: "The editor's worker is not ready",
    },
    schemes=("session", "key"),
    tag="editor",
)
@requires(Role.DEVELOPER)
async def relay(request: web.Request) -> web.StreamResponse:
    _require_session(request)
    # As sent, still %-encoded: ComfyUI names user files with an encoded "/" (workflows%2Fa.json).
    tail = request.raw_path.split("?", 1)[0].removeprefix("/editor/")
    check_allowed(request.method, tail)
    return await request.app[EDITOR].forward(request, tail)


@self_authenticating
@operation(
    summary="The editor's user stylesheet",
    ok="text/css",
    responses={200: "The stylesheet", 401: "Not signed in", 503: "The editor's worker is not ready"},
    schemes=("session", "key"),
    tag="editor",
)
@requires(Role.DEVELOPER)
async def user_css(request: web.Request) -> web.StreamResponse:
    """The frontend asks for /user.css beside the page (ComfyUI serves none there): the user's own."""
    _require_session(request)
    return await request.app[EDITOR].forward(request, "api/userdata/user.css")


@operation(summary="No favicon here", responses={204: "Nothing"}, tag="editor")
async def no_favicon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


@operation(
    summary="The editor's favicons",
    ok="image/*",  # png frames, the .ico
    responses={200: "The icon", 401: "Not one of the icons (and no key)", 404: "Unknown icon"},
    tag="editor",
)
async def favicon(request: web.Request) -> web.StreamResponse:
    """Public (``auth.PUBLIC_PATHS``), as static files are: browsers fetch favicons without cookies."""
    return await request.app[EDITOR].forward(request, f"assets/{request.match_info['path']}")


@self_authenticating
@operation(
    summary="The editor's WebSocket (ComfyUI's events for its runs)",
    responses={
        101: "Switching to the WebSocket",
        400: "Not a WebSocket handshake",
        401: "Not signed in",
        503: "The editor's worker is not ready",
    },
    schemes=("session", "key"),
    tag="editor",
)
@endless
@requires(Role.DEVELOPER)
async def socket(request: web.Request) -> web.StreamResponse:
    _require_session(request)
    return await request.app[EDITOR].relay_socket(request)


@self_authenticating
@operation(
    summary="Queue the editor's prompt (through darkroom's queue)",
    body=EditorRun,
    responses={
        200: "Queued: its prompt id",
        400: ("ComfyUI refused the prompt: its own error body", None),
        401: "Not signed in",
        403: "Not from darkroom's page",
        422: "Not a JSON prompt",
        429: "darkroom's queue is full",
    },
    schemes=("session", "key"),
    tag="editor",
)
@requires(Role.DEVELOPER)
async def queue_prompt(request: web.Request) -> web.Response:
    """The editor's "Queue": a darkroom/editor request; answers as ComfyUI's POST /prompt does."""
    _require_session(request)
    body = await read_json(request)
    try:
        run = EditorRun.model_validate(body)
    except ValidationError as e:
        message = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        error = {"type": "invalid_prompt", "message": message, "details": message, "extra_info": {}}
        return web.json_response({"error": error, "node_errors": {}}, status=400)
    queue = request.app[QUEUE]
    record = await queue.submit(
        request.app[ENDPOINTS][EDITOR_APP], run.model_dump(mode="json"), url_path=EDITOR_APP,
        base_url=base_url(request, request.app[SETTINGS]),
    )  # fmt: skip
    logger.info("editor run %s queued for client %s", record.request_id, run.client_id)
    watcher = asyncio.get_running_loop().create_task(
        _report_early_failure(request.app, record.request_id, run.client_id)
    )
    _watchers.add(watcher)  # held until done, so it is not collected mid-run
    watcher.add_done_callback(_watchers.discard)
    number = queue.position(record.request_id) or 0
    return web.json_response({"prompt_id": record.request_id, "number": number, "node_errors": {}})


_watchers: set[asyncio.Task[None]] = set()  # held so they are not collected


async def _report_early_failure(app: web.Application, request_id: str, client_id: str) -> None:
    """A run that fails before the worker has it (ComfyUI refused the prompt, no worker) would never be
    heard of in the editor: say it on the editor's socket as an execution_error."""
    subscription = app[HUB].subscribe(request_id)
    started = False
    try:
        async for event in subscription:
            started = started or event["type"] in ("started", "progress")
            if event["type"] == "failed" and not started:
                await app[EDITOR].tell(client_id, _execution_error(request_id, str(event.get("error", ""))))
    finally:
        subscription.close()


def _execution_error(prompt_id: str, message: str) -> dict[str, Any]:
    data = {
        "prompt_id": prompt_id, "node_id": "", "node_type": "darkroom", "executed": [],
        "exception_message": message, "exception_type": "darkroom", "traceback": [],
        "current_inputs": {}, "current_outputs": {}, "timestamp": int(time.time() * 1000),
    }  # fmt: skip
    return {"type": "execution_error", "data": data}


def _editor_runs(request: web.Request, *, running: bool) -> list[str]:
    queue = request.app[QUEUE]
    wanted = JobStatus.IN_PROGRESS if running else JobStatus.IN_QUEUE
    here = queue.fleet.name if queue.fleet is not None else None  # a fleet's other hosts have editors too
    return [
        r.request_id for r in queue.order.jobs.values()
        if r.app_id == EDITOR_APP and r.status is wanted and r.pinned_host == here
    ]  # fmt: skip


async def _cancel_editor_runs(request: web.Request, ids: list[str]) -> None:
    queue = request.app[QUEUE]
    for request_id in ids:
        record = queue.get(request_id)
        if record is not None and record.app_id == EDITOR_APP:  # never an API request
            await queue.cancel(request_id)


@self_authenticating
@operation(
    summary="Interrupt the editor's running prompt",
    body=Interrupt,
    responses={200: "Interrupted", 401: "Not signed in", 403: "Not from darkroom's page"},
    schemes=("session", "key"),
    tag="editor",
)
@requires(Role.DEVELOPER)
async def interrupt(request: web.Request) -> web.Response:
    """The editor's "Cancel": its running run (or the one it names), never an API request."""
    _require_session(request)
    named = (await read_model(request, Interrupt)).prompt_id
    await _cancel_editor_runs(request, [named] if named is not None else _editor_runs(request, running=True))
    return web.json_response({})


@self_authenticating
@operation(
    summary="Delete or clear the editor's queued prompts",
    body=QueueEdit,
    responses={200: "Done", 401: "Not signed in", 403: "Not from darkroom's page"},
    schemes=("session", "key"),
    tag="editor",
)
@requires(Role.DEVELOPER)
async def edit_queue(request: web.Request) -> web.Response:
    """The editor's queue panel: ``{"delete": [ids]}`` or ``{"clear": true}``, for editor runs only."""
    _require_session(request)
    edit = await read_model(request, QueueEdit)
    cleared = _editor_runs(request, running=False) if edit.clear else []
    await _cancel_editor_runs(request, edit.delete + cleared)
    return web.json_response({})


_PAGE = string.Template((Path(__file__).parent / "pages" / "signin.html").read_text())


def _page(error: str = "", *, status: int = 200, next_path: str = "/editor/") -> web.Response:
    shown = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    text = _PAGE.substitute(error=shown, next=html.escape(next_path, quote=True))
    return web.Response(
        text=text, content_type="text/html", status=status, headers={"Cache-Control": "no-store"}
    )
