"""The queue API in-process: every status code and body shape of fal's contract, with a fake worker."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, FakeGenerator, serve

from server.api.state import QUEUE
from server.settings import Settings, load_settings

URL_KEYS = {"request_id", "response_url", "status_url", "cancel_url"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), queue_max_length=5, database_url=database_url)


@pytest_asyncio.fixture
async def fake(settings: Settings) -> FakeGenerator:
    return FakeGenerator(settings, hold=True)


@pytest_asyncio.fixture
async def client(settings: Settings, fake: FakeGenerator) -> AsyncIterator[Client]:
    async with serve(settings, fake) as test_client:
        yield test_client


async def submit(client: Client, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    response = await client.post(
        f"/queue/{APP}", json={"prompt": "a cube"} if body is None else body, **kwargs
    )
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    assert response.headers["x-fal-request-id"] == result["request_id"]
    return result


async def status(client: Client, request_id: str, logs: str | None = None) -> tuple[int, dict[str, Any]]:
    query = f"?logs={logs}" if logs else ""
    response = await client.get(f"/queue/{APP}/requests/{request_id}/status{query}")
    assert response.headers["x-fal-request-id"] == request_id
    return response.status, await response.json()


async def until_completed(client: Client, request_id: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            code, body = await status(client, request_id)
            if body["status"] == "COMPLETED":
                assert code == 200
                return body
            await asyncio.sleep(0.01)


async def test_submit_answers_at_once_with_fal_keys_and_urls(client: Client) -> None:
    body = await submit(client)
    assert set(body) == URL_KEYS | {"status", "queue_position", "gateway_request_id"}
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    assert body["gateway_request_id"] == body["request_id"]
    base = f"http://{client.server.host}:{client.server.port}/queue/{APP}/requests/{body['request_id']}"
    assert body["response_url"] == base
    assert (body["status_url"], body["cancel_url"]) == (base + "/status", base + "/cancel")


async def test_request_ids_and_so_file_urls_are_unguessable(client: Client, fake: FakeGenerator) -> None:
    """Outputs are served without a key at /files/<request id>/<name> (a capability URL), so the id is
    the secret: a random uuid4 (122 random bits), a new one for every request. (/run makes its ids with
    uuid.uuid4() too, in server/api/run.py; the holding fake here would keep a run from answering.)"""
    ids = [(await submit(client))["request_id"] for _ in range(3)]
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, request_id), request_id
        fake.release(request_id)
    assert len(set(ids)) == len(ids)


async def test_urls_drop_the_subpath_and_keep_a_namespace(settings: Settings) -> None:
    from server.api.queue import queue_base

    assert queue_base("fal-ai/flux-2/edit") == "fal-ai/flux-2"
    assert queue_base("workflows/me/flow/sub") == "workflows/me/flow"
    assert queue_base("comfy/me/flow") == "comfy/me/flow"


async def test_public_url_setting_wins_over_host(settings: Settings, fake: FakeGenerator) -> None:
    async with serve(replace(settings, public_url="https://gpu.example/"), fake) as client:
        body = await submit(client, {"prompt": "x"})
        assert body["status_url"].startswith(f"https://gpu.example/queue/{APP}/requests/")


async def test_full_lifecycle_status_shapes_logs_and_result(client: Client, fake: FakeGenerator) -> None:
    request_id = (await submit(client))["request_id"]
    await fake.wait_started(request_id)
    code, body = await status(client, request_id)
    assert code == 202 and body["status"] == "IN_PROGRESS"
    assert set(body) == URL_KEYS | {"status", "logs"} and body["logs"] is None
    code, body = await status(client, request_id, logs="1")
    assert code == 202 and [entry["message"] for entry in body["logs"]][:2] == [
        "Started on a ComfyUI worker",
        "Running node 11 (SamplerCustomAdvanced)",
    ]
    for entry in body["logs"]:
        assert set(entry) == {"message", "level", "source", "timestamp"}
        assert entry["source"] == "USER" and TIMESTAMP.match(entry["timestamp"])

    fake.release(request_id)
    body = await until_completed(client, request_id)
    assert set(body) == URL_KEYS | {"status", "logs", "metrics"} and body["logs"] is None
    assert body["metrics"]["inference_time"] > 0
    _, with_logs = await status(client, request_id, logs="true")
    assert with_logs["logs"][-1]["message"] == "Finished"

    response = await client.get(f"/queue/{APP}/requests/{request_id}")
    assert response.status == 200 and response.headers["x-fal-request-id"] == request_id
    assert (await response.json())["images"][0]["url"].endswith(f"/files/{request_id}/0.png")


async def test_positions_count_everything_ahead_across_priorities(
    client: Client, fake: FakeGenerator
) -> None:
    running = (await submit(client))["request_id"]
    await fake.wait_started(running)
    low = (await submit(client, headers={"X-Fal-Queue-Priority": "low"}))["request_id"]
    first = (await submit(client))["request_id"]
    second = await submit(client, headers={"X-Fal-Queue-Priority": "normal"})
    assert second["queue_position"] == 1
    positions = {
        rid: (await status(client, rid))[1]["queue_position"] for rid in (first, second["request_id"], low)
    }
    assert positions == {first: 0, second["request_id"]: 1, low: 2}
    code, body = await status(client, low)
    assert code == 202 and set(body) == URL_KEYS | {"status", "queue_position"}

    for request_id in (running, first, second["request_id"]):
        fake.release(request_id)
        await fake.wait_started(first if request_id == running else request_id)
    await fake.wait_started(low)
    assert fake.started == [running, first, second["request_id"], low]  # normal before low, FIFO within
    fake.release(low)
    await until_completed(client, low)


async def test_failure_is_completed_with_error_and_result_replays_it(
    client: Client, fake: FakeGenerator
) -> None:
    fake.hold = False
    request_id = (await submit(client, {"prompt": "fail"}))["request_id"]
    body = await until_completed(client, request_id)
    assert body["error_type"] == "generation_error" and "boom" in body["error"]
    assert set(body) == URL_KEYS | {"status", "logs", "metrics", "error", "error_type"}
    response = await client.get(f"/queue/{APP}/requests/{request_id}")
    assert response.status == 500 and response.headers["x-fal-error-type"] == "generation_error"
    assert "boom" in (await response.json())["detail"]
    assert response.headers["x-fal-request-id"] == request_id


async def test_invalid_input_is_a_422_before_queueing(client: Client) -> None:
    response = await client.post(f"/queue/{APP}", json={"prompt": "x", "num_inference_steps": 500})
    assert response.status == 422 and response.headers["x-fal-request-id"]
    (item,) = (await response.json())["detail"]
    assert item["loc"] == ["body", "num_inference_steps"] and item["ctx"] == {"le": 12}
    response = await client.post(f"/queue/{APP}", data=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status == 422 and (await response.json())["detail"][0]["type"] == "json_invalid"
    response = await client.post("/queue/fal-ai/nope", json={"prompt": "x"})
    assert response.status == 404
    assert client.app[QUEUE].queue_length() == 0


@pytest.mark.parametrize(
    ("headers", "query", "field"),
    [
        ({"X-Fal-Queue-Priority": "urgent"}, "", "x-fal-queue-priority"),
        ({"X-Fal-Request-Timeout": "soon"}, "", "x-fal-request-timeout"),
        ({}, "?fal_max_queue_length=-1", "fal_max_queue_length"),
        ({}, "?fal_webhook=ftp://example.com/hook", "fal_webhook"),
        ({}, "?fal_webhook=http://127.0.0.1:9/hook", "fal_webhook"),
        ({}, "?fal_webhook=http://localhost:9/hook", "fal_webhook"),
        ({}, "?fal_webhook=http://169.254.169.254/latest", "fal_webhook"),
        # exactly what the document says (issue 22): no case folding, no empty value, no other spelling
        ({"X-Fal-Queue-Priority": "NORMAL"}, "", "x-fal-queue-priority"),
        ({"X-Fal-Queue-Priority": ""}, "", "x-fal-queue-priority"),
        ({"X-Fal-Request-Timeout": "0"}, "", "x-fal-request-timeout"),
        ({"X-Fal-Request-Timeout": "1e3"}, "", "x-fal-request-timeout"),
        ({"X-Fal-Request-Timeout": ""}, "", "x-fal-request-timeout"),
        ({}, "?fal_max_queue_length=%2B5", "fal_max_queue_length"),
        ({}, "?fal_max_queue_length=", "fal_max_queue_length"),
        ({}, "?fal_webhook=", "fal_webhook"),
        ({}, "?fal_webhook=https://%C3%BE%C3%BA/hook", "fal_webhook"),
    ],
)
async def test_bad_options_are_422_naming_them(
    client: Client, headers: dict[str, str], query: str, field: str
) -> None:
    response = await client.post(f"/queue/{APP}{query}", json={"prompt": "x"}, headers=headers)
    assert response.status == 422, await response.text()
    assert (await response.json())["detail"][0]["loc"][1] == field


@pytest.mark.parametrize(
    ("query", "error_type"),
    [
        ("?fal_webhook=ftp://example.com/hook", "validation_error"),  # the document's pattern says so
        ("?fal_webhook=http://127.0.0.1:9/hook", "address_not_allowed"),  # well-formed, not allowed
    ],
)
async def test_a_webhook_refusal_names_its_error_type(client: Client, query: str, error_type: str) -> None:
    response = await client.post(f"/queue/{APP}{query}", json={"prompt": "x"})
    assert response.status == 422 and (await response.json())["error_type"] == error_type


async def test_runner_hint_and_unknown_headers_are_accepted(client: Client) -> None:
    await submit(client, headers={"X-Fal-Runner-Hint": "abc", "X-Fal-No-Retry": "1", "X-Fal-Store-IO": "0"})


async def test_result_before_the_end_is_400_and_unknown_is_404(client: Client, fake: FakeGenerator) -> None:
    request_id = (await submit(client))["request_id"]
    response = await client.get(f"/queue/{APP}/requests/{request_id}")
    assert response.status == 400 and (await response.json())["detail"] == "Request is still in progress"
    for path in ("", "/status", "/status/stream"):
        response = await client.get(f"/queue/{APP}/requests/00000000-0000-0000-0000-000000000000{path}")
        assert response.status == 404
    # An id no header can carry (a newline, non-ASCII) is answered, not dropped (found by the fuzz drill).
    for unsafe in ("%0Abad", "%C3%A9t%C3%A9"):
        for method, path in (("GET", ""), ("GET", "/status"), ("PUT", "/cancel")):
            response = await client.request(method, f"/queue/{APP}/requests/{unsafe}{path}")
            assert response.status == 404 and len(response.headers["x-fal-request-id"]) == 36
    # A newline in the app part still reaches the route: cancel's documented 404 body, not a bare one.
    response = await client.put(f"/queue/bad%0Aapp/requests/{uuid.uuid4()}/cancel")
    assert response.status == 404 and await response.json() == {"status": "NOT_FOUND"}
    fake.release(request_id)


async def test_cancel_matrix(client: Client, fake: FakeGenerator) -> None:
    running = (await submit(client))["request_id"]
    queued = (await submit(client))["request_id"]
    after = (await submit(client))["request_id"]
    await fake.wait_started(running)

    for request_id in (queued, running):
        response = await client.put(f"/queue/{APP}/requests/{request_id}/cancel")
        assert response.status == 202 and await response.json() == {"status": "CANCELLATION_REQUESTED"}
        assert response.headers["x-fal-request-id"] == request_id
        body = await until_completed(client, request_id)
        assert body["error_type"] == "request_cancelled"
        response = await client.get(f"/queue/{APP}/requests/{request_id}")
        assert response.status == 499 and response.headers["x-fal-error-type"] == "request_cancelled"
        cancelled = {"detail": "Request cancelled by the client.", "error_type": "request_cancelled"}
        assert await response.json() == cancelled
    assert fake.cancelled == [running] and queued not in fake.started

    await fake.wait_started(after)  # the worker is free again
    fake.release(after)
    await until_completed(client, after)
    response = await client.put(f"/queue/{APP}/requests/{after}/cancel")
    assert response.status == 400 and await response.json() == {"status": "ALREADY_COMPLETED"}
    response = await client.put(f"/queue/{APP}/requests/nope/cancel")
    assert response.status == 404 and await response.json() == {"status": "NOT_FOUND"}


async def test_queue_limits_are_429(client: Client, fake: FakeGenerator) -> None:
    running = (await submit(client))["request_id"]
    await fake.wait_started(running)
    await submit(client, {"prompt": "a"})
    response = await client.post(f"/queue/{APP}?fal_max_queue_length=1", json={"prompt": "b"})
    assert response.status == 429 and (await response.json())["error_type"] == "queue_full"
    await submit(client, {"prompt": "b"}, params={"fal_max_queue_length": "2"})
    for _ in range(3):
        await submit(client)
    response = await client.post(f"/queue/{APP}", json={"prompt": "c"})  # queue_max_length=5
    assert response.status == 429 and "limit is 5" in (await response.json())["detail"]


async def test_concurrent_submits_cannot_pass_the_limit_together(client: Client, fake: FakeGenerator) -> None:
    running = (await submit(client))["request_id"]
    await fake.wait_started(running)
    answers = await asyncio.gather(
        *(client.post(f"/queue/{APP}", json={"prompt": str(i)}) for i in range(12))
    )
    assert sorted(r.status for r in answers) == [200] * 5 + [429] * 7  # queue_max_length=5
    for response in answers:
        response.release()


async def test_missed_start_deadline_replays_504_user_timeout(client: Client, fake: FakeGenerator) -> None:
    running = (await submit(client))["request_id"]
    await fake.wait_started(running)
    late = (await submit(client, headers={"X-Fal-Request-Timeout": "0.2"}))["request_id"]
    body = await until_completed(client, late)
    assert body["error_type"] == "request_timeout"
    response = await client.get(f"/queue/{APP}/requests/{late}")
    assert response.status == 504 and response.headers["X-Fal-Request-Timeout-Type"] == "user"
    assert late not in fake.started
    fake.release(running)


async def test_status_stream_sends_each_change_and_closes_after_completed(
    client: Client, fake: FakeGenerator
) -> None:
    running = (await submit(client))["request_id"]
    await fake.wait_started(running)
    request_id = (await submit(client))["request_id"]
    response = await client.get(f"/queue/{APP}/requests/{request_id}/status/stream?logs=1")
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    fake.release(running)
                elif events[-1]["status"] == "IN_PROGRESS" and request_id in fake.started:
                    fake.release(request_id)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "IN_QUEUE" and events[0]["queue_position"] == 0
    assert "IN_PROGRESS" in statuses and statuses[-1] == "COMPLETED"
    assert statuses.index("COMPLETED") == len(statuses) - 1  # closed right after
    logs = [entry["message"] for e in events for entry in (e.get("logs") or [])]
    assert logs.count("Started on a ComfyUI worker") == 1 and logs[-1] == "Finished"  # incremental


async def test_status_stream_of_a_finished_request_is_one_event(client: Client, fake: FakeGenerator) -> None:
    fake.hold = False
    request_id = (await submit(client))["request_id"]
    await until_completed(client, request_id)
    response = await client.get(f"/queue/{APP}/requests/{request_id}/status/stream")
    text = await response.text()
    assert text.count("data: ") == 1 and json.loads(text.split("data: ")[1])["status"] == "COMPLETED"


async def test_run_stream_sends_progress_then_the_output_last(client: Client, fake: FakeGenerator) -> None:
    fake.hold = False
    response = await client.post(f"/run/{APP}/stream", json={"prompt": "x"})
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    events = [json.loads(chunk[6:]) for chunk in (await response.text()).split("\n\n") if chunk]
    assert [e["type"] for e in events if e.get("type") == "progress"] == ["progress", "progress"]
    assert events[-1]["prompt"] == "x" and events[-1]["images"]
    assert all(e["request_id"] == response.headers["x-fal-request-id"] for e in events[:-1])


async def test_run_stream_errors_are_one_sse_event(client: Client, fake: FakeGenerator) -> None:
    fake.hold = False
    response = await client.post(f"/run/{APP}/stream", json={"prompt": "x", "num_inference_steps": 0})
    assert response.status == 422 and response.headers["Content-Type"] == "text/event-stream"
    (event,) = [json.loads(c[6:]) for c in (await response.text()).split("\n\n") if c]
    assert event["detail"][0]["loc"] == ["body", "num_inference_steps"]
    response = await client.post(f"/run/{APP}/stream", json={"prompt": "fail"})
    events = [json.loads(c[6:]) for c in (await response.text()).split("\n\n") if c]
    assert events[-1]["error_type"] == "generation_error" and "boom" in events[-1]["detail"]


async def test_a_sync_run_must_start_within_its_request_timeout(client: Client, fake: FakeGenerator) -> None:
    held = asyncio.create_task(client.post(f"/run/{APP}", json={"prompt": "holds the worker"}))
    async with asyncio.timeout(5):
        while not fake.started:
            await asyncio.sleep(0.01)
    late = await client.post(f"/run/{APP}", json={"prompt": "late"}, headers={"X-Fal-Request-Timeout": "0.3"})
    body = await late.json()
    assert late.status == 504 and late.headers["X-Fal-Request-Timeout-Type"] == "user", body
    assert body["error_type"] == "request_timeout" and "did not start" in body["detail"]
    assert "late" not in str(fake.started), "it never reached the worker"
    fake.release(fake.started[0])
    assert (await held).status == 200

    on_time = asyncio.create_task(
        client.post(f"/run/{APP}", json={"prompt": "x"}, headers={"X-Fal-Request-Timeout": "0.3"})
    )
    async with asyncio.timeout(5):
        while len(fake.started) < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.6)  # started in time: the deadline no longer applies, however long it runs
    fake.release(fake.started[1])
    assert (await on_time).status == 200
    bad = await client.post(f"/run/{APP}", json={"prompt": "x"}, headers={"X-Fal-Request-Timeout": "inf"})
    assert bad.status == 422 and (await bad.json())["detail"][0]["loc"] == ["header", "x-fal-request-timeout"]


async def wait_started_count(fake: FakeGenerator, count: int) -> None:
    async with asyncio.timeout(5):
        while len(fake.started) < count:
            await asyncio.sleep(0.01)


async def test_a_sync_run_takes_its_turn_among_queued_requests(tmp_path: Path) -> None:
    """One worker: a sync run sent after two queued requests starts after them and before a queued
    request sent after it (and before low-priority ones); before, it took the worker ahead of both."""
    settings = load_settings({}, data_dir=str(tmp_path))
    fake = FakeGenerator(settings, hold=True)
    async with serve(settings, fake) as client:
        running = (await submit(client))["request_id"]
        await fake.wait_started(running)
        low = (await submit(client, headers={"X-Fal-Queue-Priority": "low"}))["request_id"]
        first, second = [(await submit(client))["request_id"] for _ in range(2)]
        sync = asyncio.create_task(client.post(f"/run/{APP}", json={"prompt": "sync"}))
        await asyncio.sleep(0.1)  # the sync run is waiting for its turn
        later = (await submit(client))["request_id"]
        for request_id in (running, first, second):
            fake.release(request_id)
            await wait_started_count(fake, fake.started.index(request_id) + 2)
        sync_id = fake.started[3]
        assert fake.started[:3] == [running, first, second] and sync_id not in (later, low), fake.started
        fake.release(sync_id)
        response = await sync
        assert response.status == 200 and response.headers["x-fal-request-id"] == sync_id
        await fake.wait_started(later)
        fake.release(later)
        await fake.wait_started(low)
        fake.release(low)
        await until_completed(client, low)
        assert fake.started == [running, first, second, sync_id, later, low]


async def test_jwks_is_served(client: Client) -> None:
    response = await client.get("/.well-known/jwks.json")
    (key,) = (await response.json())["keys"]
    assert response.status == 200 and key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["use"] == "sig"
    assert len(key["x"]) == 43 and key["kid"]
