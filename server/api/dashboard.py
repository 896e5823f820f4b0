"""``/dashboard``: what the server is doing, for the people running it. Queue (waiting and running
requests per endpoint, with age and position; cancel), workers (state, device, GPU memory, the models
ComfyUI keeps loaded there (the node pack's /darkroom/loaded), the endpoint each ran last, restarts,
last log lines), model files (present, size, sha256 checked, the
fetch command) and recent failures. The page follows ``GET /dashboard/events`` (server-sent events,
one snapshot when something changed, checked every second), so open pages cost no polling.

Signed-in browsers (the editor's session) and keys may use it; open access needs neither.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from server.api import page_nav, sse
from server.api.access import requires
from server.api.auth import page_access, require_browser_or_key, self_authenticating
from server.api.described import operation
from server.api.state import GENERATOR, INVENTORY, METRICS, PACKS, QUEUE, SUPERVISOR
from server.api.streams import endless
from server.errors import NotFoundError, WorkerConnectionError, WorkerResponseError
from server.queue.store import JobRecord, JobStatus
from server.security.roles import Role
from server.workflows.editor import EDITOR_APP

SNAPSHOT_INTERVAL_S = 1.0
RECENT_FAILURES = 20
LOG_LINES = 8
LOADED_TIMEOUT_S = 2.0
_PAGE = (Path(__file__).parent / "pages" / "dashboard.html").read_text()


def routes() -> list[web.RouteDef]:
    snapshots = _Snapshots()

    @self_authenticating
    @operation(
        "The dashboard's snapshot: queue, workers, models, failures",
        responses={200: "The snapshot", 401: "Not signed in"},
        schemes=("session", "key"),
        tag="pages",
    )
    @requires(Role.ADMIN)
    async def state(request: web.Request) -> web.Response:
        _require(request)
        return web.json_response(await snapshots.get(request.app))

    @self_authenticating
    @operation(
        "The dashboard's snapshots as server-sent events",
        ok="text/event-stream",
        responses={200: "Snapshots", 401: "Not signed in"},
        schemes=("session", "key"),
        tag="pages",
    )
    @endless
    @requires(Role.ADMIN)
    async def events(request: web.Request) -> web.StreamResponse:
        """A snapshot now, then one each time it changes (checked every second), until the client leaves."""
        _require(request)
        response = await sse.open_stream(request)
        last = None
        try:
            while True:
                current = await snapshots.get(request.app)
                comparable = json.dumps({**current, "now": None}, sort_keys=True)
                if comparable != last:
                    await sse.send(response, current)
                    last = comparable
                await asyncio.sleep(SNAPSHOT_INTERVAL_S)
        except ConnectionResetError:
            pass
        return response

    return [
        web.get("/dashboard", page),
        web.get("/dashboard/state", state),
        web.get("/dashboard/events", events, allow_head=False),  # a stream: nothing to HEAD
        web.post("/dashboard/requests/{request_id}/cancel", cancel),
    ]


class _Snapshots:
    """One snapshot per interval, however many dashboards are open (each costs worker calls and stats)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._taken_at = -SNAPSHOT_INTERVAL_S
        self._last: dict[str, Any] = {}

    async def get(self, app: web.Application) -> dict[str, Any]:
        async with self._lock:
            if time.monotonic() - self._taken_at >= SNAPSHOT_INTERVAL_S / 2:
                self._last = await snapshot(app)
                self._taken_at = time.monotonic()
            return self._last


def _require(request: web.Request) -> None:
    require_browser_or_key(request, page="/dashboard")


@self_authenticating
@operation(
    summary="The dashboard page",
    ok="text/html",
    responses={200: "The page", 303: "Not signed in: the sign-in page"},
    schemes=("session", "key"),
    tag="pages",
)
@requires(Role.ADMIN)
async def page(request: web.Request) -> web.Response:
    page_access(request, page="/dashboard")
    return page_nav.page(request, _PAGE)


@self_authenticating
@operation(
    summary="Cancel a request from the dashboard",
    responses={
        200: "The cancel result",
        401: "Not signed in",
        403: "Not from darkroom's page",
        404: "Unknown request",
    },
    schemes=("session", "key"),
    tag="pages",
)
@requires(Role.ADMIN)
async def cancel(request: web.Request) -> web.Response:
    _require(request)
    request_id = request.match_info["request_id"]
    if request.app[QUEUE].get(request_id) is None:
        raise NotFoundError(f"No request {request_id} in the queue")
    result = await request.app[QUEUE].cancel(request_id)
    return web.json_response({"request_id": request_id, "result": result.value})


async def snapshot(app: web.Application) -> dict[str, Any]:
    """Queue, workers, models, node packs and recent failures as the dashboard shows them."""
    queue, now = app[QUEUE], time.time()
    records = list(queue.order.jobs.values())
    live = [r for r in records if r.status is not JobStatus.COMPLETED]
    live.sort(
        key=lambda r: (
            r.status is not JobStatus.IN_PROGRESS,
            queue.position(r.request_id) or 0,
            r.submitted_at,
        )
    )
    failed = [r for r in records if r.outcome is not None and r.outcome.status_code >= 400]
    failed.sort(key=lambda r: -(r.finished_at or 0.0))
    await app[METRICS].refresh_gpu_memory()
    return {
        "now": now,
        "queue": [_waiting(r, queue.position(r.request_id), now) for r in live],
        "workers": await _workers(app),
        "models": app[INVENTORY].describe(),
        "node_packs": [p.describe() for p in app[PACKS].report.packs.values()],
        "failures": [_failure(r) for r in failed[:RECENT_FAILURES]],
    }


def _waiting(record: JobRecord, position: int | None, now: float) -> dict[str, Any]:
    running_s = None if record.started_at is None else round(now - record.started_at, 1)
    return {
        "request_id": record.request_id, "endpoint": record.app_id, "status": record.status.value,
        "age_s": round(now - record.submitted_at, 1), "position": position, "running_s": running_s,
        "editor": record.app_id == EDITOR_APP,
    }  # fmt: skip


def _failure(record: JobRecord) -> dict[str, Any]:
    assert record.outcome is not None
    return {
        "request_id": record.request_id, "endpoint": record.app_id,
        "status": record.outcome.status_code, "error": record.outcome.error,
        "error_type": record.outcome.error_type, "finished_at": record.finished_at,
    }  # fmt: skip


async def _workers(app: web.Application) -> list[dict[str, Any]]:
    gpu, last_run, workers = app[METRICS].gpu_memory, app[GENERATOR].last_run, app[SUPERVISOR].workers
    loaded = await asyncio.gather(*(_loaded_models(w) for w in workers))
    rows = []
    for worker, models in zip(workers, loaded, strict=True):
        used, total = gpu.get(str(worker.id), (None, None))
        rows.append({
            **worker.describe(), "gpu_memory_used_bytes": used, "gpu_memory_total_bytes": total,
            "loaded_models": models, "last_endpoint": last_run.get(worker.id),
            "log": worker.recent_logs(LOG_LINES),
        })  # fmt: skip
    return rows


async def _loaded_models(worker: Any) -> list[dict[str, Any]] | None:
    """What ComfyUI keeps loaded on the worker; None when it cannot say now (starting, restarting)."""
    if not worker.ready:
        return None
    try:
        async with asyncio.timeout(LOADED_TIMEOUT_S):
            models: list[dict[str, Any]] = await worker.client.loaded_models()
            return models
    except (TimeoutError, WorkerConnectionError, WorkerResponseError):
        return None
