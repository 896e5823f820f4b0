"""Supervisor, ComfyClient and `darkroom serve` against real ComfyUI workers on CPU."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workers import kill_worker

from server.engine import client as cc
from server.engine.supervisor import Supervisor
from server.engine.worker import WorkerState
from server.errors import ComfyValidationError, WorkerUnavailableError
from server.settings import Settings
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.stack
session_loop = pytest.mark.asyncio(loop_scope="session")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_graph(color: int, *, slow_s: float = 0.0, steps: int = 1, width: int = 8) -> dict[str, Any]:
    """EmptyImage -> (DarkroomTestSlow) -> SaveImage; vary ``color`` to defeat ComfyUI's cache."""
    graph: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 8, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e2e"}},
    }
    if slow_s or steps > 1:
        graph["3"] = {
            "class_type": "DarkroomTestSlow",
            "inputs": {"image": ["1", 0], "seconds": slow_s, "steps": steps},
        }
        graph["2"]["inputs"]["images"] = ["3", 0]
    return graph


def unique_color() -> int:
    return uuid.uuid4().int % 0xFFFFFF


async def filed_history(client: cc.ComfyClient, prompt_id: str) -> dict[str, Any] | None:
    """ComfyUI sends its last event before it files the prompt in its history: poll briefly."""
    for _ in range(100):
        history = await client.history(prompt_id)
        if history is not None:
            return history
        await asyncio.sleep(0.05)
    return None


async def collect(client: cc.ComfyClient, graph: dict[str, Any]) -> list[cc.Event]:
    return [event async for event in client.run(graph)]


@session_loop
async def test_worker_starts_and_answers(supervisor: Supervisor, stack_settings: Settings) -> None:
    assert supervisor.ready
    (worker,) = supervisor.workers
    assert worker.state is WorkerState.READY and worker.pid is not None
    assert worker.base_url == f"http://127.0.0.1:{stack_settings.worker_base_port}"
    stats = await worker.client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.8.0"
    assert "--cpu" in stats["system"]["argv"]
    assert {"EmptyImage", "SaveImage", "DarkroomTestSlow"} <= set(await worker.client.object_info())
    # The ring buffer holds the worker's latest lines, which its log file has too (the start-up's lines
    # may have left the buffer: under pytest-xdist other files may have run on this worker first).
    recent = worker.recent_logs(500)
    log_text = (stack_settings.data_path / "workers" / "0" / "comfyui.log").read_text()
    assert "Starting server" in log_text and "To see the GUI go to" in log_text
    assert recent and all(line in log_text for line in recent[-3:])


@session_loop
async def test_events_arrive_in_order_and_output_is_a_png(supervisor: Supervisor) -> None:
    async with supervisor.worker(timeout_s=30) as worker:
        events = await collect(worker.client, image_graph(unique_color()))
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["Started", "Cached", "Executing", "Executing", "Executed", "Success"], kinds
        assert [e.node for e in events if isinstance(e, cc.Executing)] == ["1", "2"]
        (executed,) = [e for e in events if isinstance(e, cc.Executed)]
        (file,) = executed.files
        png = await worker.client.fetch_output(file.filename, file.subfolder, file.type)
        assert png.startswith(PNG_MAGIC)
        history = await filed_history(worker.client, executed.prompt_id)
        assert history is not None and history["status"]["completed"] is True


@session_loop
async def test_progress_and_previews(supervisor: Supervisor) -> None:
    async with supervisor.worker(timeout_s=30) as worker:
        events = await collect(worker.client, image_graph(unique_color(), slow_s=0.15, steps=3))
        assert [(e.value, e.max) for e in events if isinstance(e, cc.Progress)] == [(1, 3), (2, 3), (3, 3)]
        (preview,) = [e for e in events if isinstance(e, cc.Preview)]
        assert preview.format == "jpeg" and preview.node == "3" and preview.image.startswith(b"\xff\xd8")
        assert preview.prompt_id == events[0].prompt_id  # type 4 frame: we announced preview metadata

        prompt_id = uuid.uuid4().hex
        async with worker.client.watch(previews_with_metadata=False) as watcher:
            await worker.client.submit(
                image_graph(unique_color(), slow_s=0.1, steps=2),
                prompt_id=prompt_id,
                client_id=watcher.client_id,
            )
            events = [e async for e in watcher.events(prompt_id)]
        (preview,) = [e for e in events if isinstance(e, cc.Preview)]
        assert preview.format == "jpeg" and preview.prompt_id is None  # type 1 frame
        assert isinstance(events[-1], cc.Success)


@session_loop
async def test_validation_error_names_node_and_input(supervisor: Supervisor) -> None:
    async with supervisor.worker(timeout_s=30) as worker:
        with pytest.raises(ComfyValidationError) as caught:
            await collect(worker.client, image_graph(1, width=0))
        error = caught.value
        assert (error.node_id, error.class_type, error.input_name) == ("1", "EmptyImage", "width")
        assert error.node_errors[0].type == "value_smaller_than_min"
        assert "width" in str(error) and "smaller than min" in str(error)

        with pytest.raises(ComfyValidationError, match="node NoSuchNode does not exist") as caught:
            await collect(worker.client, {"1": {"class_type": "NoSuchNode", "inputs": {}}})
        assert caught.value.error_type == "invalid_prompt" and caught.value.node_id is None


@session_loop
async def test_node_failure_is_an_execution_error(supervisor: Supervisor) -> None:
    graph = image_graph(1, width=1)
    graph["1"]["inputs"]["height"] = 1
    graph["3"] = {
        "class_type": "ImageScaleBy",
        "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.01},
    }
    graph["2"]["inputs"]["images"] = ["3", 0]
    async with supervisor.worker(timeout_s=30) as worker:
        events = await collect(worker.client, graph)
    error = events[-1]
    assert isinstance(error, cc.ExecutionError)
    assert (error.node_id, error.node_type, error.exception_type) == ("3", "ImageScaleBy", "RuntimeError")
    assert "sizes should be greater than 0" in error.message and error.traceback


@session_loop
async def test_interrupt_running_and_delete_pending(supervisor: Supervisor) -> None:
    async with supervisor.worker(timeout_s=30) as worker:
        client = worker.client
        running_id, pending_id = uuid.uuid4().hex, uuid.uuid4().hex
        async with client.watch() as running, client.watch() as pending:
            await client.submit(image_graph(unique_color(), slow_s=30, steps=300), prompt_id=running_id,
                                client_id=running.client_id)  # fmt: skip
            await client.submit(image_graph(unique_color(), slow_s=30, steps=300), prompt_id=pending_id,
                                client_id=pending.client_id)  # fmt: skip
            seen: list[cc.Event] = []
            interrupted_at = 0.0
            async for event in running.events(running_id):
                seen.append(event)
                if isinstance(event, cc.Progress) and not interrupted_at:
                    await client.delete_pending([pending_id])
                    await client.interrupt(running_id)
                    interrupted_at = time.monotonic()
            assert time.monotonic() - interrupted_at < 15.0  # the node would run 30 s uninterrupted
            assert seen[-1] == cc.Interrupted(running_id, "3", "DarkroomTestSlow")
            assert [e async for e in pending.events(pending_id)] == [cc.Removed(pending_id)]
        assert (await client.queue()) == ([], [])
        history = await filed_history(client, running_id)
        assert history is not None and history["status"]["status_str"] == "error"


@session_loop
async def test_an_abandoned_run_is_cancelled_on_the_worker(supervisor: Supervisor) -> None:
    async with supervisor.worker(timeout_s=30) as worker:
        prompt_id = uuid.uuid4().hex
        running = asyncio.Event()

        async def listen() -> None:
            async for event in worker.client.run(
                image_graph(unique_color(), slow_s=30, steps=300), prompt_id=prompt_id
            ):
                if isinstance(event, cc.Progress):
                    running.set()

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(running.wait(), 10)
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener
        deadline = time.monotonic() + 5
        while (await worker.client.history(prompt_id)) is None:
            assert time.monotonic() < deadline, "the abandoned prompt kept running"
            await asyncio.sleep(0.05)
        assert (await worker.client.queue()) == ([], [])


@session_loop
async def test_scheduling_is_fifo_and_times_out(supervisor: Supervisor) -> None:
    order: list[int] = []

    async def borrow(n: int) -> None:
        async with supervisor.worker(timeout_s=10):
            order.append(n)
            await asyncio.sleep(0.05)

    async with supervisor.worker(timeout_s=10) as held:
        assert held.busy
        tasks = [asyncio.create_task(borrow(n)) for n in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(WorkerUnavailableError, match="within 0.1 s"):
            async with supervisor.worker(timeout_s=0.1):
                pass
        cancelled = asyncio.create_task(borrow(99))
        await asyncio.sleep(0.01)
        cancelled.cancel()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert not supervisor.workers[0].busy


@session_loop
async def test_killed_worker_is_restarted_and_serves(supervisor: Supervisor) -> None:
    (worker,) = supervisor.workers
    old_restarts = worker.restarts  # other tests may have restarted it before
    old_pid = await kill_worker(supervisor)
    async with supervisor.worker(timeout_s=90) as w:
        assert w.pid not in (None, old_pid) and w.restarts == old_restarts + 1
        assert w.last_exit_code == -signal.SIGKILL
        events = await collect(w.client, image_graph(unique_color()))
        (file,) = next(e for e in events if isinstance(e, cc.Executed)).files
        assert (await w.client.fetch_output(file.filename, file.subfolder, file.type)).startswith(PNG_MAGIC)
    assert supervisor.ready


# --- `darkroom serve` as a real subprocess -------------------------------------------------------


def live_pids(pgid: int) -> list[int]:
    """Processes (zombies excluded) in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def serve(tmp_path: Path, tiny_models_dir: Path, comfyui_dir: Path) -> Iterator[ServeProcess]:
    """`darkroom serve` in its own process group, not started; killed with its group afterwards."""
    process = ServeProcess(
        tmp_path / "data", tiny_models_dir, comfyui_dir, tmp_path / "serve.log", new_session=True
    )
    try:
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            os.killpg(process.process.pid, signal.SIGKILL)
            process.process.wait()


def worker_pids(serve: ServeProcess) -> list[int]:
    """Start it; its workers' pids, once ready."""
    serve.start(wait=False)
    return [worker["pid"] for worker in serve.wait_ready(timeout_s=90)["workers"]]


def test_serve_exits_cleanly_on_sigterm(serve: ServeProcess) -> None:
    workers = worker_pids(serve)
    assert serve.get_json("/health") == (200, {"status": "ok"})
    assert serve.stop(timeout_s=30) == 0, serve.tail()
    log = serve.log()
    assert f"darkroom ready at {serve.base}" in log and "[worker 0]" in log
    assert workers and all(not live_pids(pid) for pid in workers), "a worker survived"
    assert serve.process is not None and not live_pids(serve.process.pid)


def test_serve_sigkilled_leaves_no_orphans(serve: ServeProcess) -> None:
    workers = worker_pids(serve)
    assert serve.process is not None
    os.killpg(serve.process.pid, signal.SIGKILL)  # the facade's own group only; workers have their own
    serve.process.wait()
    wait_until(lambda: all(not live_pids(pid) for pid in workers), 15, "workers to die with the facade")
