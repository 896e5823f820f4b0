"""Stand-ins for process boundaries in the queue's facade tests.

``FakeGenerator`` replaces ``Generator.run`` (the ComfyUI worker boundary): one run at a time like one
worker, ComfyUI-shaped events through ``on_event``, and runs that block until the test releases them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from server.api.state import GENERATOR, QUEUE
from server.app import create_app
from server.engine import client as cc
from server.engine.models import load_manifest
from server.engine.speed import plan_speed
from server.errors import GenerationError, WorkerConnectionError
from server.media.loras import LoraCache
from server.settings import Settings, load_settings
from server.workflows.choices import ComfyChoices
from server.workflows.mapping import Endpoint

LOADED = [{"kind": "vae", "files": ["tiny/flux2_vae.safetensors"], "class": "AutoencoderKL", "device": "cpu",
           "loaded_bytes": 1024, "size_bytes": 1024}]  # fmt: skip


class FakeClient:
    """A worker's API without a ComfyUI: its loaded models; sampler lists stay unknown."""

    async def loaded_models(self) -> list[dict[str, Any]]:
        return LOADED

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        raise WorkerConnectionError("no ComfyUI in the facade tests")


class FakeWorker:
    def __init__(self, worker_id: int = 0, state: str = "ready") -> None:
        self.id = worker_id
        self.state = state
        self.gpu: str | None = None
        self.restarts = 0
        self.speed = plan_speed(load_settings({}), sys.executable, gpu=False)  # the defaults
        self.client = FakeClient()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "busy": False, "pid": None}

    def recent_logs(self, lines: int = 40) -> list[str]:
        return [f"[worker {self.id}] ready"][-lines:]


class FakeSupervisor:
    def __init__(self, workers: int = 1) -> None:
        self.workers = [FakeWorker(i) for i in range(workers)]
        self.ready = True
        self.idle_workers = workers

    def warm_keys(self) -> set[str]:
        return set()

    async def start(self, *, wait: bool = True) -> None:
        pass

    async def stop(self) -> None:
        pass


class FakeGenerator:
    """Runs one request at a time; with ``hold`` set, each run waits for ``release(request_id)``.

    A prompt of "fail" raises a GenerationError (500) after starting.
    """

    def __init__(self, settings: Settings, *, hold: bool = False) -> None:
        self.settings = settings
        self.hold = hold
        self.manifest = load_manifest()
        self.choices = ComfyChoices()
        self.loras = LoraCache(settings)
        self.last_run: dict[int, str] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}
        self._worker = asyncio.Lock()
        self.worker = (0, "cpu", "cpu")  # what runs the next request: (id, device kind, device name)
        self.placed: dict[str, tuple[int, str, str]] = {}

    def placement(self, request_id: str) -> tuple[int, str, str] | None:
        return self.placed.pop(request_id, None)

    def has_models(self, endpoint: Any) -> bool:
        return True

    def has_packs(self, endpoint: Any) -> bool:
        return True

    def gate(self, request_id: str) -> asyncio.Event:
        return self._gates.setdefault(request_id, asyncio.Event())

    def release(self, request_id: str) -> None:
        self.gate(request_id).set()

    async def wait_started(self, request_id: str, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while request_id not in self.started:
                await asyncio.sleep(0.005)

    async def run(
        self, endpoint: Endpoint, request: BaseModel, *, request_id: str, base_url: str, on_event: Any = None
    ) -> dict[str, Any]:
        async with self._worker:
            self.placed[request_id] = self.worker
            emit = on_event or _ignore
            await emit(cc.Started(request_id))
            await emit(cc.Executing(request_id, "11"))
            await emit(cc.Progress(request_id, "11", 1, 4))
            self.started.append(request_id)
            try:
                if self.hold:
                    await self.gate(request_id).wait()
                await emit(cc.Progress(request_id, "11", 4, 4))
            except asyncio.CancelledError:
                self.cancelled.append(request_id)
                raise
            prompt = getattr(request, "prompt", "")
            if prompt == "fail":
                await emit(
                    cc.ExecutionError(request_id, "11", "SamplerCustomAdvanced", "boom", "RuntimeError")
                )
                raise GenerationError(f"{endpoint.app_id}: node 11 (SamplerCustomAdvanced) failed: boom")
            await emit(cc.Success(request_id))
            self.finished.append(request_id)
            url = f"{base_url}/files/{request_id}/0.png"
            return {"images": [{"url": url, "width": 64, "height": 64}], "seed": 1, "prompt": prompt}


async def _ignore(event: Any) -> None:
    return None


APP = "darkroom/demo-flux-2"


def serve(settings: Settings, fake: FakeGenerator) -> TestClient[web.Request, web.Application]:
    """The whole app on loopback with ``fake`` in place of the generator (no ComfyUI)."""
    app = create_app(settings, FakeSupervisor(), run_supervisor=False)  # type: ignore[arg-type]
    app[GENERATOR] = fake  # type: ignore[assignment]
    app[QUEUE].generator = fake
    app[QUEUE].shutdown_grace_s = 0.0
    return TestClient(TestServer(app, host="127.0.0.1"))
