"""The composition root: ``create_app`` builds every long-lived part from the settings, puts it on the
app, starts and stops it in the app's cleanup context, and wires the routes of ``server.api``. Also
here: request ids and the one error boundary, where typed errors become fal's error bodies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server.api import (
    assets,
    auth,
    dashboard,
    editor,
    endpoints,
    files,
    hosts,
    keys,
    metrics,
    node_packs,
    openapi,
    playground,
    queue,
    quotas,
    realtime,
    run,
    security_headers,
    storage,
    usage,
    workflows,
    ws,
)  # fmt: skip
from server.api.described import operation
from server.api.metrics import Metrics
from server.api.proxy import EditorProxy
from server.api.state import (
    ACCOUNTS,
    CATALOG,
    EDITOR,
    ENDPOINTS,
    GENERATOR,
    HUB,
    INVENTORY,
    KEYS,
    LIMITER,
    METER,
    METRICS,
    MULTIPART,
    OBJECTS,
    PACKS,
    QUEUE,
    REQUEST_ID,
    SETTINGS,
    SUPERVISOR,
    UPLOADS,
)
from server.api.streams import STREAMS, end_streams
from server.engine.inventory import ModelInventory
from server.engine.models import Manifest, load_manifest
from server.engine.pack_watch import PackWatch
from server.engine.supervisor import Supervisor
from server.errors import DarkroomError, relative_paths
from server.generation.generator import Generator
from server.generation.progress import ProgressHub
from server.media.disk import DiskBudget
from server.media.loras import LoraCache
from server.media.multipart import MultipartStore
from server.media.objects import from_settings as object_store
from server.media.outputs import OutputStore
from server.media.uploads import UploadStore
from server.queue.accounts import Accounts
from server.queue.fleet import Capabilities, Fleet, capabilities_of
from server.queue.fleet_packs import FleetPacks
from server.queue.fleet_workflows import shared_catalog
from server.queue.job_queue import MAX_ATTEMPTS, JobQueue
from server.queue.limits import Limiter
from server.queue.meter import Meter
from server.queue.postgres_store import PostgresJobStore
from server.queue.prices import HourlyPrices
from server.queue.sqlite_store import SqliteJobStore
from server.queue.store import JobStore
from server.queue.webhooks import WebhookSender, WebhookSigner, webhook_policy
from server.security.keyring import KeyRing
from server.security.tokens import TokenSigner
from server.settings import Settings
from server.workflows.catalog import Catalog
from server.workflows.editor import EDITOR_APP, editor_endpoint
from server.workflows.mapping import WORKFLOWS_DIR, Endpoint, load_endpoints
from server.workflows.safety import missing_checkers
from server.workflows.version_files import VersionFiles

logger = logging.getLogger(__name__)
UPLOADS_SWEEP_INTERVAL_S = 60.0

__all__ = ["REQUEST_ID", "SETTINGS", "SUPERVISOR", "create_app"]

REQUEST_ID_HEADER = "x-fal-request-id"
_HEADER_SAFE_ID = re.compile(r"[\x21-\x7e]{1,200}")
ERROR_TYPE_HEADER = "x-fal-error-type"


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
    # An id taken from the path is whatever the client sent: one a header cannot carry (a newline,
    # non-ASCII) would make aiohttp drop the connection instead of answering.
    if not isinstance(request_id, str) or not _HEADER_SAFE_ID.fullmatch(request_id):
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
        detail = relative_paths(e.detail, request.app[SETTINGS].folders)
        return web.json_response({"detail": detail, "error_type": e.code}, status=e.status, headers=headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail = f"Path {request.path} not found" if e.status == 404 else e.reason
        if e.status == 413:  # aiohttp's own limit (request.read/post): it names the sizes
            detail = f"{e.text} (DARKROOM_BODY_MAX_BYTES)"
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return web.json_response({"detail": detail}, status=e.status, headers=headers)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return web.json_response({"detail": "Internal Server Error"}, status=500)


def create_app(settings: Settings, supervisor: Supervisor, *, run_supervisor: bool = True) -> web.Application:
    """The facade: every part built from ``settings`` (a bad mapping, key file or secret fails here, at
    start-up), then the routes. The supervisor runs with the app unless the caller runs it (tests share
    one supervisor across apps)."""
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth.auth_middleware, quotas.quota_middleware],
        client_max_size=settings.body_max_bytes,
    )
    app.on_response_prepare.extend([_request_id_on_prepare, security_headers.on_prepare])
    app[STREAMS] = {}
    app.on_shutdown.append(end_streams)  # before aiohttp waits for handlers: see api/streams.py
    app[SETTINGS] = settings
    app[SUPERVISOR] = supervisor
    signer = _build_parts(app, settings, supervisor)
    if run_supervisor:
        app.cleanup_ctx.append(_run_supervisor)
    app.cleanup_ctx.extend(
        [_open_objects, _run_queue, keys.refresh_forever, _run_meter, _sweep_uploads, _run_editor_proxy]
    )
    app.cleanup_ctx.append(_watch_packs)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_routes(
        [
            *auth.routes(),
            *keys.routes(),
            *usage.routes(),
            *run.routes(),
            files.file_route(app[GENERATOR].store),
            *openapi.routes(app[ENDPOINTS], app[GENERATOR].choices, supervisor),
            *queue.routes(signer),
            *ws.routes(),
            *realtime.routes(),
            *storage.routes(),
            *workflows.routes(),
            *node_packs.routes(),
            *endpoints.routes(),  # after workflows': /endpoints/{app_id}/workflow is matched first
            *editor.routes(),
            *metrics.routes(app[METRICS]),
            *hosts.routes(),
            *dashboard.routes(),
            *playground.routes(),
            *assets.routes(),
        ]
    )
    if app[KEYS].open:
        logger.warning("no API keys configured: every request is accepted")
    return app


def _build_parts(app: web.Application, settings: Settings, supervisor: Supervisor) -> WebhookSigner:
    """Keys, mappings, generator, queue and stores on the app; returns the webhook signer (for JWKS)."""
    token_signer = TokenSigner.load_or_create(settings.token_secret_path, database_url=settings.database_url)
    app[KEYS] = KeyRing.from_settings(settings, token_signer)
    app[HUB] = ProgressHub()
    manifest = load_manifest()
    app[ENDPOINTS] = served = load_endpoints(WORKFLOWS_DIR, manifest)
    for warning in missing_checkers(
        ((a, e.params) for a, e in served.items()), manifest, settings.models_path
    ):
        logger.warning("%s", warning)
    served[EDITOR_APP] = editor_endpoint()
    budget = DiskBudget(
        (settings.outputs_path, settings.uploads_path),
        quota_bytes=settings.storage_quota_bytes, min_free_bytes=settings.disk_min_free_bytes,
    )  # fmt: skip
    objects = object_store(settings)  # None: files stay under the data dir
    if objects is not None:
        app[OBJECTS] = objects
    outputs = OutputStore(settings.outputs_path, budget, objects)
    app[PACKS] = packs = PackWatch(settings, supervisor)
    app[GENERATOR] = Generator(
        settings, supervisor, manifest, outputs, LoraCache(settings, objects), node_packs=lambda: packs.report
    )
    signer = WebhookSigner.load_or_create(settings.webhook_key_path, database_url=settings.database_url)
    store = job_store(settings)
    app[ACCOUNTS] = Accounts(store)
    fleet = None
    if isinstance(store, PostgresJobStore):

        def capabilities() -> Capabilities:
            return capabilities_of(served, app[GENERATOR], supervisor)

        fleet = Fleet(
            store, name=settings.host_name, lease_s=settings.host_lease_s,
            capabilities=capabilities, max_attempts=MAX_ATTEMPTS,
        )  # fmt: skip
        packs.source = FleetPacks(store).read  # every host converges to the fleet's node-pack lock
        packs.share = FleetPacks(store).write  # and POST /nodes writes it there first
        packs.observers.append(fleet.offer_changed)  # a workflow is offered once its packs are verified
    app[CATALOG] = _catalog(settings, fleet, served, manifest)
    sender = WebhookSender(
        store, signer, webhook_policy(settings), timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts, backoff_base_s=settings.webhook_backoff_base_s,
        backoff_max_s=settings.webhook_backoff_max_s,
    )  # fmt: skip
    app[QUEUE] = JobQueue(
        store, app[GENERATOR], app[HUB], served, outputs=outputs,
        retention_s=settings.result_retention_s, max_queue_length=settings.queue_max_length,
        previews_per_s=settings.previews_per_s, shutdown_grace_s=settings.shutdown_grace_s, webhooks=sender,
        fleet=fleet, folders=settings.folders,
    )  # fmt: skip
    app[UPLOADS] = UploadStore(settings.uploads_path, settings.upload_max_bytes, budget, objects)
    app[MULTIPART] = MultipartStore(
        settings.uploads_path, settings.upload_max_bytes, budget=budget, objects=objects
    )
    app[EDITOR] = EditorProxy(supervisor)
    app[INVENTORY] = ModelInventory(manifest, settings.models_path)
    app[METRICS] = Metrics(supervisor, app[QUEUE], served)
    app[QUEUE].observers.append(app[METRICS].job_finished)
    prices = HourlyPrices.parse(settings.gpu_hourly_usd)  # a malformed price fails at start-up
    app[METER] = Meter(
        app[ACCOUNTS], device=lambda: _device_kind(supervisor), prices=prices,
        placed=lambda request_id: app[GENERATOR].placement(request_id),
    )  # fmt: skip
    app[QUEUE].observers.append(app[METER].job_finished)
    app[LIMITER] = Limiter()
    sender.observers.append(app[METRICS].webhook_settled)
    return signer


def _catalog(
    settings: Settings, fleet: Fleet | None, served: dict[str, Endpoint], manifest: Manifest
) -> Catalog:
    """Published workflows: in the fleet's database when there is a fleet (every host serves what any
    host published, and claims them once it can run them), else in files under the data dir."""
    if fleet is None:
        return Catalog(VersionFiles(settings.published_path), served, manifest)
    if any(settings.published_path.glob("*/*/*.json")):
        logger.warning(
            "the workflows published under %s are not served in a fleet, which keeps them in its "
            "database: publish them again through any host", settings.published_path
        )  # fmt: skip
    return shared_catalog(fleet, served, manifest)


def job_store(settings: Settings) -> JobStore:
    """PostgreSQL when ``database_url`` names one (a fleet), else the SQLite file under the data dir."""
    if settings.database_url:
        return PostgresJobStore(settings.database_url)
    return SqliteJobStore(settings.jobs_db_path)


async def _run_supervisor(app: web.Application) -> AsyncIterator[None]:
    supervisor = app[SUPERVISOR]
    await supervisor.start(wait=False)  # serve /health and /ready while the workers boot
    try:
        yield
    finally:
        await supervisor.stop()


async def _watch_packs(app: web.Application) -> AsyncIterator[None]:
    """Verify the node packs once the workers are up; follow their lock (server/engine/pack_watch.py)."""
    task = asyncio.create_task(app[PACKS].run(), name="node-packs")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _open_objects(app: web.Application) -> AsyncIterator[None]:
    """The shared object store (DARKROOM_STORAGE_URL), open before the queue starts and after it stops."""
    objects = app.get(OBJECTS)
    if objects is not None:
        await objects.open()
    try:
        yield
    finally:
        if objects is not None:
            await objects.close()


async def _run_queue(app: web.Application) -> AsyncIterator[None]:
    """The store opens and the queue recovers when the app starts; both stop with it."""
    queue = app[QUEUE]
    assert queue.webhooks is not None
    await queue.store.open()
    await app[CATALOG].load()  # before the queue recovers requests for published endpoints
    queue.concurrency = max(1, len(app[SUPERVISOR].workers))  # one job per worker at a time
    await queue.start()
    await queue.webhooks.start()
    try:
        yield
    finally:
        await queue.stop()
        await queue.webhooks.stop()
        await queue.store.close()


async def _run_meter(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[METER].run(), name="usage-meter")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _device_kind(supervisor: Supervisor) -> str:
    """What a request no worker took is metered on: ``cuda`` when any worker has a GPU, else ``cpu``."""
    workers = getattr(supervisor, "workers", [])  # (a test's stand-in may have none)
    return "cuda" if any(getattr(w, "gpu", None) is not None for w in workers) else "cpu"


async def _run_editor_proxy(app: web.Application) -> AsyncIterator[None]:
    await app[EDITOR].open()
    try:
        yield
    finally:
        await app[EDITOR].close()


async def _sweep_uploads(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_uploads_forever(app), name="uploads-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_uploads_forever(app: web.Application) -> None:
    """Drop abandoned multipart uploads and uploads past their retention, now and once a minute."""
    while True:
        try:
            await app[MULTIPART].sweep()
            await asyncio.to_thread(app[UPLOADS].expire, older_than_s=app[SETTINGS].upload_retention_s)
        except Exception:
            logger.exception("uploads sweep failed")
        await asyncio.sleep(UPLOADS_SWEEP_INTERVAL_S)


@operation(summary="Liveness: 200 while the process is alive", responses={200: "Alive"}, tag="health")
async def health(request: web.Request) -> web.Response:
    """200 while the process is alive."""
    return web.json_response({"status": "ok"})


@operation(
    summary="Readiness: 200 when every ComfyUI worker answers (each worker's state only with a key)",
    responses={200: "Ready", 503: "A worker is not ready (with a key: which, and each worker's state)"},
    tag="health",
)
async def ready(request: web.Request) -> web.Response:
    """200 when every worker answers, 503 otherwise; each worker's state only to a caller with a key
    (its process id and address are nobody else's business)."""
    supervisor = request.app[SUPERVISOR]
    status = 200 if supervisor.ready else 503
    body: dict[str, Any] = {"status": "ready" if supervisor.ready else "not_ready"}
    if auth.has_valid_key(request):
        workers = [w.describe() for w in supervisor.workers]
        waiting = sum(1 for w in workers if w["state"] != "ready")
        body["workers"] = workers
        if status != 200:
            body["detail"] = (
                f"{waiting} of {len(workers)} ComfyUI workers not ready" if workers else "no workers started"
            )
    return web.json_response(body, status=status)
