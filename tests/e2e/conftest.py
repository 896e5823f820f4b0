"""The real stack: ComfyUI on CPU as a subprocess, started once per session and polled until it answers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from served import Server, serve_darkroom

from server.app import create_app
from server.engine.models import load_manifest, make_tiny, sha256_of
from server.engine.supervisor import Supervisor
from server.engine.worker import free_port
from server.settings import PINNED_COMFYUI_COMMIT, PROJECT_ROOT, Settings, load_settings

# A test-only node, installed into the session worker's own custom_nodes/: slow, interruptible at
# each step (the progress hook raises once the prompt is interrupted) and sending one preview.
TEST_NODES = """
import time

import comfy.utils
from comfy_api.latest import ComfyExtension, io
from PIL import Image


class DarkroomTestSlow(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomTestSlow",
            category="darkroom/test",
            inputs=[
                io.Image.Input("image"),
                io.Float.Input("seconds", default=1.0, min=0.0, max=600.0),
                io.Int.Input("steps", default=10, min=1, max=10000),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, image, seconds: float, steps: int) -> io.NodeOutput:
        bar = comfy.utils.ProgressBar(steps)
        preview = ("JPEG", Image.new("RGB", (8, 8), (255, 0, 0)), 64)
        for step in range(steps):
            time.sleep(seconds / steps)
            bar.update_absolute(step + 1, steps, preview if step == 0 else None)
        return io.NodeOutput(image)


class _Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DarkroomTestSlow]


async def comfy_entrypoint() -> ComfyExtension:
    return _Extension()
"""


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    """The pinned ComfyUI tree: $DARKROOM_COMFYUI_DIR, else <repo>/data/comfyui/ComfyUI-<commit>."""
    configured = os.environ.get("DARKROOM_COMFYUI_DIR")
    path = (
        Path(configured)
        if configured
        else PROJECT_ROOT / "data" / "comfyui" / f"ComfyUI-{PINNED_COMFYUI_COMMIT}"
    )
    if not (path / "main.py").is_file():
        pytest.fail(
            f"No ComfyUI at {path} (no main.py). Run `make setup` (or `darkroom comfyui install`), "
            "or set DARKROOM_COMFYUI_DIR to a ComfyUI checkout.",
            pytrace=False,
        )
    return path.resolve()


@pytest.fixture(scope="session")
def tiny_models_dir(comfyui_dir: Path) -> Path:
    """The tiny random-weight models, built (once, deterministically) if any is missing."""
    settings = load_settings({}, data_dir=str(PROJECT_ROOT / "data"))
    manifest = load_manifest()
    generated = [name for name, entry in manifest.models.items() if entry.source.generated]
    if manifest.missing(generated, settings.models_path):
        make_tiny(settings, comfyui_dir)
    missing = manifest.missing(generated, settings.models_path)
    assert not missing, f"make-tiny did not build {missing}"
    changed = [
        name
        for name in generated
        if manifest.get(name).sha256 != sha256_of(settings.models_path / manifest.get(name).file)
    ]
    assert not changed, f"tiny models differ from the manifest's sha256 (rebuild, or update it): {changed}"
    return settings.models_path


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Settings:
    """Settings for the session's stack: 1 CPU worker, a temporary data dir, a free loopback port."""
    data_dir = tmp_path_factory.mktemp("darkroom-data")
    return load_settings(
        {},
        data_dir=str(data_dir),
        models_dir=str(tiny_models_dir),
        workers=1,
        device="cpu",
        worker_base_port=free_port(),
        worker_start_timeout_s=120.0,
        worker_restart_backoff_max_s=2.0,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def supervisor(stack_settings: Settings, comfyui_dir: Path) -> AsyncIterator[Supervisor]:
    """A running Supervisor with one CPU worker (plus the DarkroomTestSlow node); stopped at teardown."""
    nodes_dir = stack_settings.data_path / "workers" / "0" / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    (nodes_dir / "darkroom_test_nodes.py").write_text(TEST_NODES, encoding="utf-8")
    supervisor = Supervisor(stack_settings, comfyui_dir)
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def facade(stack_settings: Settings, supervisor: Supervisor) -> AsyncIterator[TestClient]:
    """The real app over the session's supervisor, in-process on loopback."""
    app = create_app(stack_settings, supervisor, run_supervisor=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.fixture(scope="session")
def served_darkroom(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path, comfyui_dir: Path
) -> Iterator[Server]:
    """`darkroom serve` over TLS with a key, shared by the browser tests (each publishes its own names)."""
    yield from serve_darkroom(tmp_path_factory.mktemp("served"), tiny_models_dir, comfyui_dir)
