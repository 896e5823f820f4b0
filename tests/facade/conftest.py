"""Fixtures shared by the facade tests: the app on loopback over a held ``FakeGenerator``. A module
supplies ``settings`` (its keys); a module may define its own ``fake`` or ``client`` instead."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import FakeGenerator, serve

from server.settings import Settings


@pytest.fixture
def fake(settings: Settings) -> FakeGenerator:
    return FakeGenerator(settings, hold=True)


@pytest_asyncio.fixture
async def client(
    settings: Settings, fake: FakeGenerator
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with serve(settings, fake) as test_client:
        yield test_client
