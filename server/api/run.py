"""fal's sync API: POST /run/{app_id}[/{subpath}] validates, generates on a worker and answers the output."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from server.api import sse
from server.api.auth import caller_of
from server.api.described import operation
from server.api.request import REQUEST_TIMEOUT, base_url, read_json, request_timeout_s
from server.api.state import ENDPOINTS, GENERATOR, HUB, METER, METRICS, QUEUE, REQUEST_ID
from server.errors import BlockedAddressError, DarkroomError, InputError, StartTimeoutError
from server.generation.live import run_live
from server.queue.store import DEFAULT_USER_ID
from server.workflows.mapping import Endpoint
from server.workflows.validation import find_endpoint, validate_input

# A well-formed input refused for what it names: a file, LoRA or model that is not there or cannot be
# fetched (input_error), a URL whose address the outbound policy refuses (address_not_allowed).
# And fal's 504 request_timeout for a start deadline the client set (X-Fal-Request-Timeout) and a busy
# worker could not meet (X-Fal-Request-Timeout-Type: user).
INPUT_REFUSALS = {422: (InputError.code, BlockedAddressError.code), 504: (StartTimeoutError.code,)}
START_HEADER = {"X-Fal-Request-Timeout": REQUEST_TIMEOUT}


def routes() -> list[web.RouteDef]:
    """The sync run routes (the stream first: ``/run/{path}`` would match it too)."""
    # (?s: any character, a newline too (as the queue routes): such a path gets the route's own 404.
    # Not .../realtime: that is the realtime WebSocket's (GET), so a POST there is a 405.
    return [
        web.post("/run/{path:(?s:.+)}/stream", run_stream),
        web.post("/run/{path:(?s:(?!.*/realtime$).+)}", run),
    ]


async def read_input(request: web.Request, endpoint: Endpoint) -> Any:
    """The validated request body, or a 422 that says what is wrong."""
    return validate_input(endpoint, await read_json(request))


@operation(
    summary="Run an app and wait for its output (fal's sync API)",
    responses={
        200: "The output",
        404: "Unknown app",
        422: "Invalid input",
        499: "The client left",
        500: "The run failed",
        502: "The worker answered wrongly",
        503: "Model files missing or no worker available",
        504: "Did not start before its X-Fal-Request-Timeout, or ran past its run limit and was interrupted",
        507: "No room to store the output (storage quota or disk full)",
    },
    headers=START_HEADER,
    refusals=INPUT_REFUSALS,
    tag="run",
)
async def run(request: web.Request) -> web.Response:
    """Sync run: the response is the model output itself (fal sends no envelope)."""
    endpoint = find_endpoint(request.app[ENDPOINTS], request.match_info["path"])
    request_id = request[REQUEST_ID] = str(uuid.uuid4())
    with counted(request.app, user_of(request), endpoint.app_id, request_id) as ran:
        start_timeout_s = request_timeout_s(request.headers)
        parsed = await read_input(request, endpoint)
        generator = request.app[GENERATOR]
        output = ran["output"] = await run_live(
            generator, request.app[HUB], endpoint, parsed, request_id=request_id,
            base_url=base_url(request, generator.settings), previews_per_s=generator.settings.previews_per_s,
            start_timeout_s=start_timeout_s, turn=request.app[QUEUE].sync_turn, measured=ran,
        )  # fmt: skip
    return web.json_response(output)


def user_of(request: web.Request) -> str:
    return caller_of(request).user_id or DEFAULT_USER_ID


def metered(
    app: web.Application, user_id: str, app_id: str, status: int, run_s: float, ran: dict[str, Any],
    request_id: str,
) -> None:  # fmt: skip
    """Count a finished sync run (or realtime input) in the metrics and its key's usage (priced for
    the worker that ran ``request_id``). A request refused before it reached a worker (4xx) used no
    worker time."""
    app[METRICS].run_finished(app_id, status, run_s)
    app[METER].record(
        user_id, app_id, status, run_s=0.0 if 400 <= status < 500 else run_s, output=ran.get("output"),
        request_id=request_id,
        training_steps=int(ran.get("training_steps", 0)),
    )  # fmt: skip


@contextlib.contextmanager
def counted(app: web.Application, user_id: str, app_id: str, request_id: str) -> Iterator[dict[str, Any]]:
    """Count a sync run with the status it ends with (499: the client left); the caller puts the
    ``output`` in the dict it is given, for metering."""
    started, status, ran = time.perf_counter(), 200, dict[str, Any]()
    try:
        yield ran
    except DarkroomError as e:
        status = e.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except Exception:
        status = 500
        raise
    finally:
        metered(app, user_id, app_id, status, time.perf_counter() - started, ran, request_id)


@operation(
    summary="Run an app, streaming its events as server-sent events",
    ok="text/event-stream",
    # Errors found before the run starts are one event too (the SDKs read every answer as events).
    responses={
        200: "Events, then the output (or an error event)",
        404: ("Unknown app, as one {detail, error_type} event", "text/event-stream"),
        408: ("The body arrived too slowly (DARKROOM_CLIENT_TIMEOUT_S), as one event", "text/event-stream"),
        413: ("The body is too large (DARKROOM_BODY_MAX_BYTES), as one event", "text/event-stream"),
        422: ("Invalid input or header, as one {detail, error_type} event", "text/event-stream"),
    },
    headers=START_HEADER,
    refusals=INPUT_REFUSALS,
    tag="run",
)
async def run_stream(request: web.Request) -> web.StreamResponse:
    """Sync run as SSE: live events (started, progress, preview, log), then the output as the last
    event; an error is one event ``{"detail", "error_type"}``. A client that leaves cancels the run."""
    request_id = request[REQUEST_ID] = str(uuid.uuid4())
    try:
        endpoint = find_endpoint(request.app[ENDPOINTS], request.match_info["path"])
        start_timeout_s = request_timeout_s(request.headers)
        parsed = await read_input(request, endpoint)
    except DarkroomError as e:
        return await sse.error_stream(request, e)
    generator, hub = request.app[GENERATOR], request.app[HUB]
    subscription = hub.subscribe(request_id)
    ran: dict[str, Any] = {}
    task = asyncio.create_task(
        run_live(
            generator, hub, endpoint, parsed, request_id=request_id,
            base_url=base_url(request, generator.settings), previews_per_s=generator.settings.previews_per_s,
            start_timeout_s=start_timeout_s, turn=request.app[QUEUE].sync_turn, measured=ran,
        )
    )  # fmt: skip
    response = await sse.open_stream(request)
    started, status = time.perf_counter(), 499  # unless the run ends while the client listens
    try:
        async for event in subscription:
            if event["type"] == "completed":
                status, ran["output"] = 200, event["result"]
                await sse.send(response, event["result"])
            elif event["type"] == "failed":
                status = int(event.get("status_code", 500))
                await sse.send(response, {"detail": event["detail"], "error_type": event["error_type"]})
            else:
                await sse.send(response, event)
    except ConnectionResetError:
        pass  # the client left; the run is cancelled below
    finally:
        subscription.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        elapsed_s = time.perf_counter() - started
        metered(request.app, user_of(request), endpoint.app_id, status, elapsed_s, ran, request_id)
    return response
