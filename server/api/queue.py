"""fal's queue API: submit, status (+ SSE stream), result and cancel, over the durable ``JobQueue``.

Routes (``{base}`` is ``[workflows|comfy/]owner/alias``; requests are looked up by id alone):
``POST /queue/{app_id}[/{subpath}]``, ``GET /queue/{base}/requests/{id}/status[?logs=1]``,
``GET .../status/stream``, ``GET /queue/{base}/requests/{id}``, ``PUT .../cancel``, plus the
webhook key at ``GET /.well-known/jwks.json``. The queue, its store and the webhook sender start
and stop with the app.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from server.api import sse
from server.api.auth import caller_of
from server.api.described import operation
from server.api.params import HTTP_URL, WHOLE_NUMBER, Param, invalid
from server.api.request import REQUEST_TIMEOUT, base_url, read_json, request_timeout_s
from server.api.run import INPUT_REFUSALS
from server.api.state import ENDPOINTS, GENERATOR, HUB, QUEUE, REQUEST_ID, SETTINGS, USER_ID
from server.api.streams import endless
from server.errors import BlockedAddressError, InputError, NotFoundError
from server.queue.job import CancelResult
from server.queue.store import DEFAULT_USER_ID, JobRecord, JobStatus, Priority
from server.queue.webhooks import WebhookSigner, check_webhook_url, webhook_policy
from server.security.netpolicy import PolicyResolver
from server.security.roles import Role
from server.security.untrusted import url_field
from server.settings import Settings
from server.workflows.validation import find_endpoint, validate_input

PRIORITY = Param(
    "Where it waits: normal, or low (behind every normal one)",
    enum=("normal", "low"),
    message="normal or low",
)
WEBHOOK = Param(
    "URL called with the result (http or https; its host must resolve to an allowed address)",
    pattern=HTTP_URL, format="uri",
    message="an http:// or https:// URL: a host name in ASCII (an IDN as xn--), an IPv4 or a [bracketed] "
    "IPv6 address",
)  # fmt: skip
MAX_QUEUE_LENGTH = Param(
    "Refuse (429) when this many wait already", pattern=WHOLE_NUMBER, message="a whole number, 0 or more"
)
STORE_DOWN = "The job store (a fleet's database) is unavailable: try again shortly"
NAMESPACES = frozenset({"workflows", "comfy"})
_CANCEL_STATUS = {
    CancelResult.CANCELLATION_REQUESTED: 202,
    CancelResult.ALREADY_COMPLETED: 400,
    CancelResult.NOT_FOUND: 404,
}


class QueueStatus(BaseModel):
    """fal's status body; which keys are present depends on the status."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    waiting_for: str | None = None  # darkroom: why a queued request cannot start anywhere yet


class CancelBody(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


def routes(signer: WebhookSigner) -> list[web.RouteDef]:
    """The queue routes, and the webhook key at ``GET /.well-known/jwks.json``."""
    # (?s: any character, a newline too, as a client may send it percent-encoded: such a path gets the
    # route's own answer, e.g. cancel's documented 404 {"status": "NOT_FOUND"}, not a bare "not found".
    requests = "/queue/{base:(?s:.+)}/requests/{request_id}"
    return [
        web.get(requests + "/status/stream", status_stream),
        web.get(requests + "/status", status),
        web.put(requests + "/cancel", cancel),
        web.get(requests, result),
        web.post("/queue/{path:(?s:(?!.*/requests/).+)}", submit),  # not a request's own URLs
        jwks_route(signer),
    ]


def jwks_route(signer: WebhookSigner) -> web.RouteDef:
    """``GET /.well-known/jwks.json``: the public key receivers verify signatures with."""

    @operation(
        "The public key webhook receivers verify signatures with (JWKS)",
        responses={200: "The key set"},
        tag="queue",
    )
    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(signer.jwks(), headers={"Cache-Control": "public, max-age=3600"})

    return web.get("/.well-known/jwks.json", jwks)


def queue_base(path: str) -> str:
    """The owner/alias part of an app path (subpath dropped; a workflows/ or comfy/ prefix kept)."""
    parts = path.strip("/").split("/")
    return "/".join(parts[: 3 if parts[0] in NAMESPACES else 2])


def urls(record: JobRecord) -> dict[str, str]:
    """The request's response, status and cancel URLs."""
    response_url = f"{record.base_url}/queue/{record.url_path}/requests/{record.request_id}"
    return {
        "response_url": response_url,
        "status_url": response_url + "/status",
        "cancel_url": response_url + "/cancel",
    }


def status_body(
    record: JobRecord, *, position: int | None, logs: list[dict[str, Any]] | None,
    waiting_for: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """fal's status body: exactly the keys each state has (see docs/fal-api.md section 2), and, in a
    fleet where no host can run the request, ``waiting_for`` saying so."""
    body: dict[str, Any] = {"status": record.status.value, "request_id": record.request_id, **urls(record)}
    if record.status is JobStatus.IN_QUEUE:
        body["queue_position"] = position or 0
        if waiting_for is not None:
            body["waiting_for"] = waiting_for
        return body
    body["logs"] = logs
    if record.status is JobStatus.COMPLETED and record.outcome is not None:
        body["metrics"] = {"inference_time": record.outcome.inference_time_s}
        if not record.outcome.ok:
            body["error"] = record.outcome.error
            body["error_type"] = record.outcome.error_type
    return body


def wants_logs(query: Mapping[str, str]) -> bool:
    """``logs=1`` (JS) or ``logs=true`` (Python)."""
    return query.get("logs", "").strip().lower() in ("1", "true", "yes")


async def submit_job(
    app: web.Application, path: str, body: Any, *, base: str, headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None, user_id: str = DEFAULT_USER_ID,
) -> JobRecord:  # fmt: skip
    """Validate and queue one request (shared by POST /queue and the WebSocket's submit)."""
    headers, query = headers or {}, query or {}
    endpoint = find_endpoint(app[ENDPOINTS], path)
    parsed = validate_input(endpoint, body)
    app[GENERATOR].choices.check_known(endpoint, parsed)
    webhook_url = await _webhook_url(app[SETTINGS], WEBHOOK.read("query", "fal_webhook", query))
    max_queue_length = MAX_QUEUE_LENGTH.read("query", "fal_max_queue_length", query)
    priority = PRIORITY.read("header", "X-Fal-Queue-Priority", headers) or "normal"
    return await app[QUEUE].submit(
        endpoint, parsed.model_dump(mode="json", exclude_unset=True), url_path=queue_base(path),
        base_url=base, priority=Priority(priority),
        timeout_s=request_timeout_s(headers),
        webhook_url=webhook_url,
        max_queue_length=None if max_queue_length is None else int(max_queue_length),
        user_id=user_id,
    )  # fmt: skip


def submitted_body(app: web.Application, record: JobRecord) -> dict[str, Any]:
    return {
        "status": JobStatus.IN_QUEUE.value,
        "request_id": record.request_id,
        **urls(record),
        "queue_position": app[QUEUE].position(record.request_id) or 0,
        "gateway_request_id": record.request_id,
    }


@operation(
    summary="Queue a request for an app (fal's queue API)",
    responses={
        200: "Queued: the request id and its URLs",
        404: "Unknown app",
        422: "Invalid input, header or query",
        429: "The queue is full",
        503: STORE_DOWN,
    },
    query={"fal_webhook": WEBHOOK, "fal_max_queue_length": MAX_QUEUE_LENGTH},
    headers={"X-Fal-Queue-Priority": PRIORITY, "X-Fal-Request-Timeout": REQUEST_TIMEOUT},
    refusals=INPUT_REFUSALS,  # a webhook host that does not resolve, or one not allowed, too
    tag="queue",
)
async def submit(request: web.Request) -> web.Response:
    """``POST /queue/{app_id}[/{subpath}]``: validate, persist, answer at once."""
    find_endpoint(request.app[ENDPOINTS], request.match_info["path"])  # 404 before reading the body
    record = await submit_job(
        request.app, request.match_info["path"], await read_json(request),
        base=base_url(request, request.app[SETTINGS]), headers=request.headers, query=request.query,
        user_id=request.get(USER_ID) or DEFAULT_USER_ID,
    )  # fmt: skip
    request[REQUEST_ID] = record.request_id
    return web.json_response(submitted_body(request.app, record))


async def _lookup(request: web.Request) -> JobRecord:
    request_id = request[REQUEST_ID] = request.match_info["request_id"]
    record = await request.app[QUEUE].find(request_id)
    caller = caller_of(request)
    if record is None or not (
        caller.may(Role.ADMIN) or record.user_id == (caller.user_id or DEFAULT_USER_ID)
    ):
        # Another key's request reads as unknown: a runner or developer sees only its own.
        raise NotFoundError(f"Request {request_id} not found (unknown, or its result expired)")
    return record


async def _status_now(request: web.Request, record: JobRecord, with_logs: bool) -> dict[str, Any]:
    queue = request.app[QUEUE]
    logs = (
        await queue.logs(record.request_id) if with_logs and record.status is not JobStatus.IN_QUEUE else None
    )
    return status_body(
        record, position=queue.position(record.request_id), logs=logs, waiting_for=queue.waiting_note(record)
    )


@operation(
    summary="A queued request's status",
    ok=QueueStatus,
    responses={
        200: "Completed",
        202: "Queued or running",
        404: "Unknown request, or its result expired",
        503: STORE_DOWN,
    },
    query={"logs": "1 or true: include the logs"},
    tag="queue",
)
async def status(request: web.Request) -> web.Response:
    """202 while queued or running, 200 once completed; memory only unless finished logs are asked for."""
    record = await _lookup(request)
    body = await _status_now(request, record, wants_logs(request.query))
    return web.json_response(body, status=200 if record.status is JobStatus.COMPLETED else 202)


@operation(
    summary="A queued request's status as server-sent events, until it completes",
    ok="text/event-stream",
    responses={200: "Status events", 404: "Unknown request", 503: STORE_DOWN},
    query={"logs": "1 or true: include new log lines"},
    tag="queue",
)
@endless
async def status_stream(request: web.Request) -> web.StreamResponse:
    """SSE: the status now, then once per change (new logs only), closing after COMPLETED."""
    record = await _lookup(request)
    queue, with_logs = request.app[QUEUE], wants_logs(request.query)
    await queue.ensure_live_state(record.request_id)
    subscription = request.app[HUB].subscribe(record.request_id)
    response = await sse.open_stream(request)
    sent_logs, last = 0, None
    try:
        while (current := queue.get(record.request_id)) is not None:
            body = await _status_now(request, current, with_logs)
            if body.get("logs") is not None:  # incremental: only the lines not sent yet
                body["logs"], sent_logs = body["logs"][sent_logs:], len(body["logs"])
            unchanged = {k: v for k, v in body.items() if k != "logs"} == last
            if not unchanged or body.get("logs"):
                await sse.send(response, body)
                last = {k: v for k, v in body.items() if k != "logs"}
            if current.status is JobStatus.COMPLETED:
                break
            try:
                async with asyncio.timeout(sse.KEEPALIVE_S):  # not wait_for: it can swallow a cancel (3.11)
                    event = await anext(subscription, None)
                if event is None:
                    await asyncio.sleep(0.1)  # the hub's stream ended; poll until the index agrees
            except TimeoutError:
                await sse.keepalive(response)
    except ConnectionResetError:
        pass
    finally:
        subscription.close()
    return response


@operation(
    summary="A queued request's output (or its failure, replayed)",
    responses={
        200: "The output",
        400: "Not finished yet",
        404: "Unknown request, or its result expired",
        422: "The input was refused when it ran (a file it names is not there or not allowed)",
        499: "Cancelled",
        500: "The run failed",
        503: "Model files missing or no worker; or the job store (a fleet's database) is unavailable",
        504: "Did not start before its X-Fal-Request-Timeout, or ran past its run limit",
        507: "No room to store the output (storage quota or disk full)",
    },
    refusals=INPUT_REFUSALS,
    tag="queue",
)
async def result(request: web.Request) -> web.Response:
    """The output (200), a failure replayed (its status, body, headers), 400 if unfinished, 404."""
    record = await _lookup(request)
    outcome = await request.app[QUEUE].outcome(record.request_id)
    return web.Response(
        body=outcome.body_json.encode(), status=outcome.status_code, headers=outcome.headers,
        content_type="application/json",
    )  # fmt: skip


@operation(
    summary="Cancel a queued or running request",
    ok=CancelBody,
    responses={
        202: "Cancellation requested",
        400: ("Already completed", CancelBody),
        404: ("Unknown request", CancelBody),
        503: STORE_DOWN,
    },
    refusals={400: (CancelResult.ALREADY_COMPLETED.value,)},  # fal's answer: {"status": ...}, no error_type
    tag="queue",
)
async def cancel(request: web.Request) -> web.Response:
    """202 CANCELLATION_REQUESTED (queued: removed; running: interrupted), 400 ALREADY_COMPLETED, 404."""
    request_id = request[REQUEST_ID] = request.match_info["request_id"]
    outcome = await request.app[QUEUE].cancel(request_id)
    return web.json_response({"status": outcome.value}, status=_CANCEL_STATUS[outcome])


async def _webhook_url(settings: Settings, url: str | None) -> str | None:
    """The fal_webhook URL if it may be called: http(s), and its host resolves to allowed addresses."""
    if not url:
        return None
    policy = webhook_policy(settings)
    parsed = url_field(url, "query", "fal_webhook")
    host = parsed.raw_host or ""
    try:
        check_webhook_url(url, policy)
        await PolicyResolver(policy).resolve(host.strip("[]"), parsed.port or 0, family=socket.AF_UNSPEC)
    except BlockedAddressError as e:
        raise invalid("query", "fal_webhook", e.message, url, code=e.code) from e
    except OSError as e:
        message = f"the webhook host {host} does not resolve: {e}"
        raise invalid("query", "fal_webhook", message, url, code=InputError.code) from e
    return url
