"""What a route reads from the client, and its limits: strict JSON (no NaN/Infinity, bounded nesting),
a body size cap (413) and a minimum rate (408 for a slow-loris body), each a 4xx saying what is wrong."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, FakeGenerator, serve

from server.api.request import MAX_JSON_DEPTH, parse_json
from server.errors import RequestValidationError
from server.settings import Settings, load_settings

Client = TestClient[web.Request, web.Application]
SUBMIT = f"/queue/{APP}"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"a": 1e999}', "out of a number's range"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested too deeply"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_strict_json_refuses_what_python_would_take(body: bytes, words: str) -> None:
    with pytest.raises(RequestValidationError) as refused:
        parse_json(body)
    assert words in refused.value.detail[0]["msg"]


def test_strict_json_takes_what_json_allows() -> None:
    deepest = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(b'{"a": [1.5, -2e10, null, true, "\\u00e9"]}') == {"a": [1.5, -2e10, None, True, "é"]}
    assert parse_json(deepest) is not None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), body_max_bytes=4096, client_timeout_s=0.5)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with serve(settings, FakeGenerator(settings)) as test_client:
        yield test_client


async def detail(response: Any) -> str:
    return json.dumps((await response.json())["detail"])


async def test_a_body_past_the_limit_is_413_naming_the_setting(client: Client) -> None:
    response = await client.post(SUBMIT, data=json.dumps({"prompt": "x" * 5000}))
    assert response.status == 413 and "DARKROOM_BODY_MAX_BYTES" in await detail(response)
    small = await client.post(SUBMIT, json={"prompt": "x" * 1000})
    assert small.status == 200, await small.text()


async def test_a_body_that_drips_in_is_408(client: Client) -> None:
    async def drip() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(20):
            await asyncio.sleep(0.1)  # 10 bytes a second: far under 64 KiB per 0.5 s
            yield b"x"

    started = asyncio.get_running_loop().time()
    response = await client.post(SUBMIT, data=drip(), headers={"Content-Type": "application/json"})
    assert response.status == 408 and "DARKROOM_CLIENT_TIMEOUT_S" in await detail(response)
    assert asyncio.get_running_loop().time() - started < 1.9, "refused within a window or two, not at the end"


async def test_deep_json_is_422_not_500(client: Client) -> None:
    response = await client.post(SUBMIT, data=b"[" * 2000 + b"]" * 2000)
    assert response.status == 422 and "nested too deeply" in await detail(response)
