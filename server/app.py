"""The aiohttp application: request ids, the one error boundary, health/readiness, then the fal routes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_log import AccessLogger

from . import auth, endpoints, queue_api, realtime, storage_api, ws_api
from .errors import DarkroomError
from .keys import REQUEST_ID, SETTINGS, SUPERVISOR
from .progress import HUB, ProgressHub
from .settings import Settings
from .supervisor import Supervisor

logger = logging.getLogger(__name__)

__all__ = ["REQUEST_ID", "SETTINGS", "SUPERVISOR", "PollQuietAccessLogger", "create_app"]

REQUEST_ID_HEADER = "x-fal-request-id"
ERROR_TYPE_HEADER = "x-fal-error-type"


class PollQuietAccessLogger(AccessLogger):
    """aiohttp's access log without the successful polls: SDKs poll a request's status ten times a
    second, and formatting those lines cost a third of a status answer. Set the access logger to DEBUG
    to see them."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if (
            request.method == "GET"
            and response.status < 400
            and (request.path.endswith("/status") or request.path in ("/health", "/ready"))
            and not self.logger.isEnabledFor(logging.DEBUG)
        ):
            return
        super().log(request, response, time)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response carries x-fal-request-id: the handler's ``request[REQUEST_ID]`` or a new uuid4."""
    try:
        response = await handler(request)
    except web.HTTPException as e:  # only non-error ones get here (redirects); errors are rendered below
        e.headers[REQUEST_ID_HEADER] = _request_id(request)
        raise
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = _request_id(request)
    return response


async def _request_id_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    # Streamed responses (SSE, WebSocket) send their headers before the middleware sees them.
    if REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = _request_id(request)


def _request_id(request: web.Request) -> str:
    # A handler names its request with request[REQUEST_ID]; a plain "request_id" key is honoured too.
    request_id = request.get(REQUEST_ID) or request.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        request_id = str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    return request_id


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become HTTP responses, in fal's body shape."""
    try:
        return await handler(request)
    except DarkroomError as e:
        log = logger.warning if e.status >= 500 else logger.info
        log("%s %s -> %d %s: %s", request.method, request.path, e.status, e.code, e.message)
        headers = {**e.headers, ERROR_TYPE_HEADER: e.code}
        return web.json_response({"detail": e.detail, "error_type": e.code}, status=e.status, headers=headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail = f"Path {request.path} not found" if e.status == 404 else e.reason
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return web.json_response({"detail": detail}, status=e.status, headers=headers)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return web.json_response({"detail": "Internal Server Error"}, status=500)


def create_app(settings: Settings, supervisor: Supervisor, *, run_supervisor: bool = True) -> web.Application:
    """The facade: health routes and the fal routes; the supervisor runs with the app unless the
    caller runs it (tests share one supervisor across apps)."""
    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    app[SETTINGS] = settings
    app[SUPERVISOR] = supervisor
    app.on_response_prepare.append(_request_id_on_prepare)
    if run_supervisor:
        app.cleanup_ctx.append(_run_supervisor)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    auth.setup(app, settings)
    app[HUB] = ProgressHub()
    endpoints.setup(app, settings, supervisor)
    queue_api.setup(app, settings)
    ws_api.setup(app)
    realtime.setup(app)
    storage_api.setup(app, settings)
    return app


async def _run_supervisor(app: web.Application) -> AsyncIterator[None]:
    supervisor = app[SUPERVISOR]
    await supervisor.start(wait=False)  # serve /health and /ready while the workers boot
    try:
        yield
    finally:
        await supervisor.stop()


async def health(request: web.Request) -> web.Response:
    """200 while the process is alive."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when every worker answers; 503 with each worker's state otherwise."""
    supervisor = request.app[SUPERVISOR]
    workers = [w.describe() for w in supervisor.workers]
    if supervisor.ready:
        return web.json_response({"status": "ready", "workers": workers})
    waiting = sum(1 for w in workers if w["state"] != "ready")
    return web.json_response(
        {
            "status": "not_ready",
            "detail": f"{waiting} of {len(workers)} ComfyUI workers not ready"
            if workers
            else "no workers started",
            "workers": workers,
        },
        status=503,
    )
