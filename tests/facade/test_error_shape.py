"""Every registered route answers errors in fal's shape: {"detail": ...} (+ error_type) and x-fal-request-id.

The routes are read from the real app's router, so routes added later are checked without editing
this file. Each gets three probes: no key, a wrong key, and a good key with bad input and unknown ids.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from server.api import auth
from server.api.openapi import build_document
from server.api.state import ENDPOINTS
from server.app import create_app
from server.settings import Settings, load_settings
from tests.fakes import IdleSupervisor

KEY = "shape-test-key"
GOOD = {"Authorization": f"Key {KEY}"}
BAD_BODY = b"{not json"
# What fills each {placeholder}: ids that exist nowhere, an app id that exists nowhere.
SAMPLES = {
    "path": "darkroom/no-such-app",
    "app_id": "darkroom/no-such-app",
    "owner": "darkroom",
    "alias": "no-such-app",
    "request_id": str(uuid.UUID(int=1)),
    "upload_id": "0" * 32,
    "name": "missing.png",
}
BODY_METHODS = {"POST", "PUT", "PATCH"}
# Routes with no id and no body, so nothing a probe can get wrong: with a key they answer 200.
LISTINGS = {
    (method, path)
    for method in ("GET", "HEAD")
    for path in (
        "/workflows",
        "/endpoints",
        "/hosts",
        "/metrics",
        "/dashboard/state",
        "/dashboard/events",
        "/keys",
        "/usage",
        "/nodes",
    )
}
# Pages for people, answering HTML (the editor's sign-in): tests/e2e/test_editor.py and
# tests/facade/test_playground.py check them.
BROWSER_PAGES = {
    "/editor",
    "/editor/",
    "/editor/login",
    "/editor/logout",
    "/dashboard",
    "/dashboard/usage",
    "/playground",
    "/playground/",
    "/playground/{app_id}",
}
CANCEL_BODIES = [{"status": "NOT_FOUND"}, {"status": "ALREADY_COMPLETED"}]


def build_app(settings: Settings) -> web.Application:
    return create_app(settings, IdleSupervisor(ready=False), run_supervisor=False)  # type: ignore[arg-type]


def documented_statuses() -> dict[tuple[str, str], set[int]]:
    """(method, canonical path) -> the statuses the OpenAPI document promises (per-app routes: any app's)."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = build_app(load_settings({}, data_dir=data_dir, api_keys=KEY))
        document = build_document(app.router.routes(), app[ENDPOINTS])
    statuses: dict[tuple[str, str], set[int]] = {}
    for path, item in document["paths"].items():
        for verb, op in item.items():
            key = (verb.upper(), re.sub(r"^/(run|queue)/darkroom/demo-flux-2$", r"/\1/{path}", path))
            statuses.setdefault(key, set()).update(int(code) for code in op["responses"])
    return statuses


DOCUMENTED = documented_statuses()


def documented_paths() -> dict[str, tuple[str, set[str]]]:
    """Each documented path (per-app ones as they are) -> (a URL of it, its methods): each parameter
    filled with a sample its documented pattern takes."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = build_app(load_settings({}, data_dir=data_dir, api_keys=KEY))
        document = build_document(app.router.routes(), app[ENDPOINTS])
    found = {}
    for path, item in document["paths"].items():
        url = path
        for parameter in next(iter(item.values())).get("parameters", []):
            if parameter["in"] == "path":
                name, pattern = parameter["name"], parameter["schema"].get("pattern", "")
                candidates = (SAMPLES.get(name, f"nope-{name}"), "favicon.ico", "1")
                url = url.replace(f"{{{name}}}", next(c for c in candidates if re.match(pattern, c)))
        found[path] = (url, {verb.upper() for verb in item})
    return found


PATHS = documented_paths()
EVERY_METHOD = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")


def assert_documented(method: str, canonical: str, status: int) -> None:
    promised = DOCUMENTED.get((method if method != "HEAD" else "GET", canonical), set())
    assert status in promised, (
        f"{method} {canonical} answered {status}, not in the document's {sorted(promised)}"
    )


def registered_routes() -> list[tuple[str, str]]:
    """(method, canonical path) of every route the real app registers."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = build_app(load_settings({}, data_dir=data_dir, api_keys=KEY))
        routes = {
            (method, r.resource.canonical)
            for r in app.router.routes()
            if r.resource is not None
            for method in (("GET", "POST", "DELETE") if r.method == "*" else (r.method,))
        }
    return sorted(routes, key=lambda r: (r[1], r[0]))


def fill(canonical: str) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLES.get(m[1], f"nope-{m[1]}"), canonical)


def is_public_path(path: str, method: str) -> bool:
    return path in auth.PUBLIC_PATHS or (
        method in ("GET", "HEAD") and path.startswith(auth.PUBLIC_GET_PREFIX)
    )


async def assert_fal_shape(response: ClientResponse, method: str) -> dict[str, Any] | None:
    where = f"{method} {response.url.path} -> {response.status}"
    assert response.headers.get("x-fal-request-id"), f"{where}: no x-fal-request-id"
    if method == "HEAD":
        return None
    if response.content_type == "text/event-stream":
        # Streaming routes may send the error as one SSE event (fal-api.md section 5).
        events = [
            line[5:].strip() for line in (await response.text()).splitlines() if line.startswith("data:")
        ]
        assert len(events) == 1, f"{where}: expected one error event, got {events!r}"
        body = json.loads(events[0])
    else:
        assert response.content_type == "application/json", f"{where}: {response.content_type}"
        body = await response.json()
        if isinstance(body, dict) and "error_type" in body:
            assert response.headers.get("x-fal-error-type") == body["error_type"], where
    if response.url.path.endswith("/cancel") and body in CANCEL_BODIES:
        return body  # fal's own cancel replies (fal-api.md section 2): the SDKs expect exactly these
    assert isinstance(body, dict) and "detail" in body, f"{where}: {body!r}"
    assert isinstance(body["detail"], (str, list)) and body["detail"], f"{where}: empty detail"
    return body


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Raw-byte routes (uploads) take any body: for them the bad input is one over the size limit.
    return load_settings({}, data_dir=str(tmp_path), api_keys=KEY, upload_max_bytes=len(BAD_BODY) - 1)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_app(settings))) as test_client:
        yield test_client


ROUTES = [route for route in registered_routes() if route[1] not in BROWSER_PAGES]


def test_the_walk_sees_the_known_routes() -> None:
    seen = {path for _, path in ROUTES}
    assert {"/health", "/ready", "/run/{path}", "/storage/upload/initiate"} <= seen


@pytest.mark.parametrize(("method", "canonical"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_route_errors_have_fal_shape(
    client: TestClient[web.Request, web.Application], method: str, canonical: str
) -> None:
    path = fill(canonical)
    body_kwargs: dict[str, Any] = (
        {"data": BAD_BODY, "headers": {"Content-Type": "application/json"}} if method in BODY_METHODS else {}
    )
    public = is_public_path(path, method)
    if not public:
        for headers in ({}, {"Authorization": "Key wrong-key"}):
            merged = {**body_kwargs.get("headers", {}), **headers}
            response = await client.request(method, path, **{**body_kwargs, "headers": merged})
            assert_documented(method, canonical, response.status)
            if response.status == 401:
                body = await assert_fal_shape(response, method)
                assert body is None or body["error_type"] == "unauthorized"
                continue
            # A route may authenticate itself (upload URLs): then it must still refuse the probe.
            assert response.status >= 400, f"{method} {path} without a key answered {response.status}"
            await assert_fal_shape(response, method)

    merged = {**body_kwargs.get("headers", {}), **GOOD}
    response = await client.request(method, path, **{**body_kwargs, "headers": merged})
    assert_documented(method, canonical, response.status)
    if public and response.status < 400:
        assert response.headers.get("x-fal-request-id")  # health, readiness, docs: fine to succeed
        return
    if (method, canonical) in LISTINGS:
        assert response.status == 200 and response.headers.get("x-fal-request-id"), response.status
        return
    assert response.status >= 400, f"{method} {path} accepted unknown ids / bad input: {response.status}"
    assert response.status not in (408, 409), "fal's Python client retries 408/409 ten times"
    await assert_fal_shape(response, method)


async def test_unknown_path_and_wrong_method(client: TestClient[web.Request, web.Application]) -> None:
    unauthenticated = await client.get("/no/such/route")
    assert unauthenticated.status == 401  # no key: not even whether a route exists
    await assert_fal_shape(unauthenticated, "GET")
    missing = await client.get("/no/such/route", headers=GOOD)
    assert missing.status == 404
    assert (await assert_fal_shape(missing, "GET")) == {"detail": "Path /no/such/route not found"}
    wrong_method = await client.delete("/storage/upload/initiate", headers=GOOD)
    assert wrong_method.status == 405
    await assert_fal_shape(wrong_method, "DELETE")


@pytest.mark.parametrize(
    "path",
    [
        "/run/darkroom/demo-flux-2",
        "/run/darkroom/demo-flux-2/stream",
        "/queue/darkroom/demo-flux-2",
        "/workflows",
        "/tokens/",
        "/storage/upload/initiate",
    ],
)
async def test_a_body_that_is_not_utf8_is_a_422(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    """schemathesis found these answering 500 (issue 13): bytes that are not UTF-8 are not JSON."""
    headers = {**GOOD, "Content-Type": "application/json"}
    response = await client.post(path, data=b"1\x1e+\xff\xfe\xc3(", headers=headers)
    body = await assert_fal_shape(response, "POST")
    assert response.status == 422 or response.content_type == "text/event-stream", response.status
    assert body is not None and "not UTF-8" in body["detail"][0]["msg"], body


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_an_undeclared_method_is_405_allowing_exactly_the_declared_ones(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    """Every documented path, every method it does not declare: 405, and Allow lists exactly the
    document's methods for it (what a client generated from the document may send)."""
    url, declared = PATHS[path]
    for method in sorted(set(EVERY_METHOD) - declared):
        response = await client.request(method, url, headers=GOOD)
        assert response.status == 405, f"{method} {path}: {response.status}, declared {sorted(declared)}"
        allowed = set(response.headers.get("Allow", "").split(",")) - {""}
        assert allowed == declared, f"{method} {path}: Allow {sorted(allowed)}, declared {sorted(declared)}"
        await assert_fal_shape(response, method)
