"""The facade in-process (aiohttp test client) with a fake supervisor: health, readiness, error shape, ids."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from server.api.access_log import PollQuietAccessLogger
from server.api.state import REQUEST_ID, SETTINGS, SUPERVISOR
from server.app import create_app
from server.errors import NotFoundError, RequestValidationError, WorkerUnavailableError
from server.settings import Settings, load_settings


class FakeWorker:
    def __init__(self, worker_id: int, state: str) -> None:
        self.id = worker_id
        self.state = state

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "busy": False, "pid": None}


class FakeSupervisor:
    """Stands in for the process boundary: records start/stop, reports a settable readiness."""

    def __init__(self) -> None:
        self.workers = [FakeWorker(0, "ready"), FakeWorker(1, "starting")]
        self.calls: list[str] = []

    @property
    def ready(self) -> bool:
        return all(w.state == "ready" for w in self.workers)

    async def start(self, *, wait: bool = True) -> None:
        self.calls.append(f"start(wait={wait})")

    async def stop(self) -> None:
        self.calls.append("stop")


class Body(pydantic.BaseModel):
    num_inference_steps: int = pydantic.Field(le=12)


async def raise_not_found(request: web.Request) -> web.Response:
    request[REQUEST_ID] = "req-123"
    raise NotFoundError("No request 'abc'", headers={"x-extra": "1"})


async def raise_validation(request: web.Request) -> web.Response:
    try:
        Body.model_validate({"num_inference_steps": 28})
    except pydantic.ValidationError as e:
        raise RequestValidationError.from_pydantic(e) from e
    return web.Response()


async def raise_unavailable(request: web.Request) -> web.Response:
    raise WorkerUnavailableError("no ComfyUI worker became free within 5 s")


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"data: {}\n\n")
    return response


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path))


@pytest_asyncio.fixture
async def fake() -> FakeSupervisor:
    return FakeSupervisor()


@pytest_asyncio.fixture
async def client(
    settings: Settings, fake: FakeSupervisor
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings, fake)  # type: ignore[arg-type]
    app.router.add_get("/test/not-found", raise_not_found)
    app.router.add_post("/test/validation", raise_validation)
    app.router.add_get("/test/unavailable", raise_unavailable)
    app.router.add_get("/test/crash", crash)
    app.router.add_get("/test/stream", stream)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def assert_request_id(headers: Any) -> str:
    value = headers["x-fal-request-id"]
    uuid.UUID(value)
    return str(value)


async def test_app_keys_and_supervisor_lifecycle(settings: Settings, fake: FakeSupervisor) -> None:
    app = create_app(settings, fake)  # type: ignore[arg-type]
    assert app[SETTINGS] is settings and app[SUPERVISOR] is fake  # type: ignore[comparison-overlap]
    async with TestClient(TestServer(app)):
        assert fake.calls == ["start(wait=False)"]  # the app serves /ready while workers boot
    assert fake.calls == ["start(wait=False)", "stop"]


async def test_health(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/health")
    assert response.status == 200 and await response.json() == {"status": "ok"}
    assert_request_id(response.headers)


async def test_ready_is_503_with_worker_states_until_all_answer(
    client: TestClient[web.Request, web.Application], fake: FakeSupervisor
) -> None:
    response = await client.get("/ready")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not_ready" and body["detail"] == "1 of 2 ComfyUI workers not ready"
    assert [w["state"] for w in body["workers"]] == ["ready", "starting"]
    assert_request_id(response.headers)

    fake.workers[1].state = "ready"
    response = await client.get("/ready")
    assert response.status == 200 and (await response.json())["status"] == "ready"


async def test_unknown_path_is_fal_404(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/no/such/path")
    assert response.status == 404
    assert await response.json() == {"detail": "Path /no/such/path not found"}
    assert_request_id(response.headers)


async def test_wrong_method_is_405_json(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post("/health")
    assert response.status == 405 and await response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["Allow"] == "GET,HEAD"
    assert_request_id(response.headers)


async def test_domain_error_uses_fal_shape_and_the_handlers_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/test/not-found")
    assert response.status == 404
    assert await response.json() == {"detail": "No request 'abc'", "error_type": "not_found"}
    assert response.headers["x-fal-error-type"] == "not_found" and response.headers["x-extra"] == "1"
    assert response.headers["x-fal-request-id"] == "req-123"


async def test_validation_error_is_pydantic_style_422(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.post("/test/validation")
    assert response.status == 422
    assert await response.json() == {
        "detail": [
            {
                "loc": ["body", "num_inference_steps"],
                "msg": "Input should be less than or equal to 12",
                "type": "less_than_equal",
                "ctx": {"le": 12},
                "input": 28,
            }
        ],
        "error_type": "validation_error",
    }
    assert_request_id(response.headers)


async def test_worker_unavailable_is_503_not_a_retried_status(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/test/unavailable")
    assert response.status == 503
    assert (await response.json())["error_type"] == "runner_scheduling_failure"
    assert_request_id(response.headers)


async def test_unexpected_exception_is_a_bare_500_and_logged(
    client: TestClient[web.Request, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="server.app"):
        response = await client.get("/test/crash")
    assert response.status == 500 and await response.json() == {"detail": "Internal Server Error"}
    assert_request_id(response.headers)
    (record,) = [r for r in caplog.records if r.name == "server.app"]
    assert record.exc_info is not None and "secret internals" in str(record.exc_info[1])


async def test_streamed_responses_carry_a_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/test/stream")
    assert response.status == 200 and await response.read() == b"data: {}\n\n"
    assert_request_id(response.headers)


async def test_request_ids_differ_per_request(client: TestClient[web.Request, web.Application]) -> None:
    first = await client.get("/health")
    second = await client.get("/health")
    assert assert_request_id(first.headers) != assert_request_id(second.headers)


def test_access_log_leaves_out_successful_polls(caplog: pytest.LogCaptureFixture) -> None:
    access = PollQuietAccessLogger(logging.getLogger("test.access"), PollQuietAccessLogger.LOG_FORMAT)
    poll = "/queue/darkroom/demo-flux-2/requests/abc/status"
    cases = [("GET", poll, 202), ("GET", "/health", 200), ("GET", poll, 404), ("POST", "/queue/x/y", 200)]
    with caplog.at_level(logging.INFO, logger="test.access"):
        for method, path, code in cases:
            access.log(make_mocked_request(method, path), web.Response(status=code), 0.001)
    assert [r.getMessage().split('"')[1] for r in caplog.records] == [
        f"GET {poll} HTTP/1.1",
        "POST /queue/x/y HTTP/1.1",
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="test.access"):
        access.log(make_mocked_request("GET", poll), web.Response(status=202), 0.001)
    assert len(caplog.records) == 1


def test_access_log_leaves_out_app_tokens(caplog: pytest.LogCaptureFixture) -> None:
    access = PollQuietAccessLogger(logging.getLogger("test.access"), PollQuietAccessLogger.LOG_FORMAT)
    path = "/run/darkroom/demo-flux-2/stream?fal_jwt_token=secret-token-value&x=1"
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(make_mocked_request("POST", path), web.Response(status=200), 0.001)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "secret-token-value" not in line
    assert '"POST /run/darkroom/demo-flux-2/stream?fal_jwt_token=***&x=1 HTTP/1.1"' in line
