"""Supervisor planning (pure) and lifecycle failure modes against stand-in worker processes.

The real ComfyUI runs in tests/e2e; here a few-line ``main.py`` stands in at the process boundary for
what ComfyUI will not do on demand: crash at start-up, hang, ignore SIGTERM, answer in milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from server.engine.supervisor import Supervisor, extra_model_paths, plan_devices, visible_gpus
from server.engine.worker import WorkerState, free_port, worker_command
from server.errors import ConfigError, WorkerStartError, WorkerUnavailableError
from server.settings import PROJECT_ROOT, Settings, load_settings

ANSWERS = """
import http.server, json, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"system": {"comfyui_version": "stand-in"}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("stand-in listening on", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
CRASHES = """
import sys
print("loading nodes", flush=True)
print("ImportError: no module named torch", flush=True)
sys.exit(3)
"""
HANGS = "import time\nprint('importing torch...', flush=True)\ntime.sleep(600)\n"
IGNORES_SIGTERM = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + ANSWERS


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": str(tmp_path / "data"), "device": "cpu", "workers": 1}
    values["worker_base_port"] = free_port()
    values.update(overrides)
    return load_settings({}, **values)


def stand_in(tmp_path: Path, source: str) -> Path:
    root = tmp_path / "comfyui"
    root.mkdir()
    (root / "main.py").write_text(source)
    return root


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_visible_gpus(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == ["0"]
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n"
    )
    smi.chmod(0o755)
    assert visible_gpus({}, nvidia_smi=str(smi)) == ["0", "1"]
    assert visible_gpus({}, nvidia_smi=str(tmp_path / "missing")) == []


def test_plan_devices(tmp_path: Path) -> None:
    def plan(gpus: list[str], **overrides: object) -> list[str | None]:
        return plan_devices(load_settings({}, data_dir=str(tmp_path), **overrides), gpus)

    assert plan([]) == [None]
    assert plan(["0", "1"]) == ["0", "1"]
    assert plan(["0", "1"], workers=3) == ["0", "1", "0"]
    assert plan(["0", "1"], device="cpu") == [None]
    assert plan([], device="cpu", workers=2) == [None, None]
    with pytest.raises(ConfigError, match="device=cuda but no GPU"):
        plan([], device="cuda")
    with pytest.raises(ConfigError, match="expected auto, cpu or cuda"):
        plan([], device="tpu")


def test_extra_model_paths_and_command(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path))
    paths = extra_model_paths(settings)["darkroom"]
    assert paths["base_path"] == str(tmp_path / "models")
    assert (paths["diffusion_models"], paths["text_encoders"], paths["clip"]) == (
        "diffusion_models",
        "text_encoders",
        "text_encoders",
    )
    # darkroom's pack, then the installed third-party packs' folder (server/engine/node_packs.py)
    assert paths["custom_nodes"] == f"{PROJECT_ROOT / 'custom_nodes'}\n{tmp_path / 'node_packs' / 'nodes'}"
    base = tmp_path / "workers" / "0"
    command = worker_command(
        "py", Path("/c"), port=9, base_dir=base, extra_paths_yaml=Path("/y.yaml"), cpu=True
    )
    assert command[:2] == ["py", "/c/main.py"] and command[-1] == "--cpu"
    assert command[command.index("--database-url") + 1] == f"sqlite:///{base}/comfyui.db"
    assert command[command.index("--output-directory") + 1] == str(base / "output")
    assert "--cpu" not in worker_command(
        "py", Path("/c"), port=9, base_dir=base, extra_paths_yaml=Path("/y"), cpu=False
    )


async def test_a_crash_at_start_up_reports_the_log_tail(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    supervisor = Supervisor(settings, stand_in(tmp_path, CRASHES))
    with pytest.raises(WorkerStartError, match="exited with code 3 during start-up") as caught:
        await supervisor.start()
    assert "ImportError: no module named torch" in caught.value.log_tail
    assert "ImportError: no module named torch" in str(caught.value)
    log = (settings.data_path / "workers" / "0" / "comfyui.log").read_text()
    assert "loading nodes" in log
    with pytest.raises(WorkerUnavailableError):
        async with supervisor.worker():
            pass


async def test_a_hung_start_times_out_and_is_killed(tmp_path: Path) -> None:
    supervisor = Supervisor(settings_for(tmp_path, worker_start_timeout_s=0.5), stand_in(tmp_path, HANGS))
    await supervisor.start(wait=False)
    for _ in range(500):  # the spawn, polled: a loaded machine may take longer than a fixed sleep
        if (pid := supervisor.workers[0].pid) is not None:
            break
        await asyncio.sleep(0.01)
    assert pid is not None and supervisor.workers[0].state is WorkerState.STARTING
    with pytest.raises(WorkerStartError, match=r"did not answer GET /system_stats within 0.5 s") as caught:
        await supervisor.wait_ready(timeout_s=10)
    assert caught.value.log_tail[-1] == "importing torch..."
    await supervisor.stop()
    assert not alive(pid)


async def test_a_dead_worker_is_restarted_after_backoff(tmp_path: Path) -> None:
    supervisor = Supervisor(settings_for(tmp_path), stand_in(tmp_path, ANSWERS))
    await supervisor.start()
    try:
        (worker,) = supervisor.workers
        first_pid = worker.pid
        assert supervisor.ready and first_pid is not None
        async with supervisor.worker(model_key="a"):
            pass
        assert supervisor.warm_keys() == {"a"}
        os.kill(first_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while supervisor.ready:  # noticed once the child is reaped, within milliseconds
            await asyncio.sleep(0.01)
        assert worker.state is WorkerState.RESTARTING and supervisor.warm_keys() == set()
        while not supervisor.ready:
            await asyncio.sleep(0.01)
        assert worker.warm_key is None  # a restarted worker has nothing loaded
        async with supervisor.worker(timeout_s=10) as borrowed:
            assert borrowed.pid not in (None, first_pid)
            assert time.monotonic() - killed_at >= 0.9  # the first back-off is 1 s
        assert (worker.restarts, worker.last_exit_code, worker.describe()["state"]) == (1, -9, "ready")
    finally:
        await supervisor.stop()
    assert worker.state is WorkerState.STOPPED and worker.pid is None


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    supervisor = Supervisor(settings_for(tmp_path), stand_in(tmp_path, IGNORES_SIGTERM), stop_timeout_s=0.3)
    await supervisor.start()
    pid = supervisor.workers[0].pid
    assert pid is not None
    started = time.monotonic()
    await supervisor.stop()
    assert not alive(pid) and supervisor.workers[0].last_exit_code == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < 5


async def test_a_taken_port_is_replaced(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = Supervisor(settings_for(tmp_path, worker_base_port=port), stand_in(tmp_path, ANSWERS))
        await supervisor.start()
        try:
            assert supervisor.workers[0].port != port and supervisor.ready
        finally:
            await supervisor.stop()


async def test_start_writes_the_model_paths_config(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    supervisor = Supervisor(settings, stand_in(tmp_path, ANSWERS))
    await supervisor.start()
    await supervisor.stop()
    written = yaml.safe_load((settings.data_path / "workers" / "extra_model_paths.yaml").read_text())
    assert written == extra_model_paths(settings)
    assert (settings.data_path / "workers" / "0" / "custom_nodes").is_dir()


class _Idle:
    """A ready worker slot (the borrowing logic reads only these fields)."""

    def __init__(self, worker_id: int) -> None:
        self.id, self.ready, self.busy = worker_id, True, False
        self.warm_key: str | None = None
        self.idle_since_s = 0.0
        self.client = SimpleNamespace(stuck_prompt=None)  # no prompt outlived its interrupt


async def test_a_pinned_borrower_waits_for_its_worker_and_holds_up_no_other(tmp_path: Path) -> None:
    supervisor = Supervisor(load_settings({}, data_dir=str(tmp_path)), tmp_path)
    supervisor.workers = [_Idle(0), _Idle(1)]  # type: ignore[list-item]
    order: list[str] = []

    async def borrow(name: str, worker_id: int | None, hold_s: float) -> int:
        async with supervisor.worker(worker_id=worker_id) as w:
            order.append(f"{name}@{w.id}")
            await asyncio.sleep(hold_s)
            return w.id

    first = asyncio.create_task(borrow("a", 0, 0.2))  # takes worker 0
    await asyncio.sleep(0.01)
    pinned = asyncio.create_task(borrow("b", 0, 0.0))  # waits for worker 0
    await asyncio.sleep(0.01)
    other = asyncio.create_task(borrow("c", None, 0.0))  # must not wait behind b: worker 1 is idle
    assert await other == 1 and order == ["a@0", "c@1"]
    assert await pinned == 0 and await first == 0 and order == ["a@0", "c@1", "b@0"]
    with pytest.raises(WorkerUnavailableError, match="no ComfyUI worker 5"):
        async with supervisor.worker(worker_id=5):
            pass


def test_a_worker_keeps_its_last_runs_outputs_only(tmp_path: Path) -> None:
    """ComfyUI's cache may answer the next prompt with the last run's file names: those stay, older go."""
    from server.engine.worker import Worker

    worker = Worker(0, None, tmp_path, free_port(), session=None)  # type: ignore[arg-type]
    output = tmp_path / "output"
    output.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (output / name).write_bytes(b"x")
    (tmp_path / "secret.txt").write_bytes(b"outside the folder")
    worker.keep_outputs(["a.png", "b.png"])
    worker.keep_outputs(["b.png", "c.png", "../secret.txt"])
    assert sorted(p.name for p in output.iterdir()) == ["b.png", "c.png"]
    worker.keep_outputs([])
    assert not list(output.iterdir())
    assert (tmp_path / "secret.txt").exists(), "names outside the output folder are never deleted"


SHOWS_ARGV = (
    "import os, sys\nprint('argv', sys.argv[1:], os.environ.get('DARKROOM_TORCH_COMPILE'), flush=True)\n"
)


async def test_speed_settings_reach_the_worker_and_a_missing_attention_package_is_no_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, attention="sage", torch_compile=True)
    supervisor = Supervisor(settings, stand_in(tmp_path, SHOWS_ARGV + ANSWERS))
    await supervisor.start()
    try:
        (worker,) = supervisor.workers
        shown = worker.describe()["speed"]
        assert shown == {
            "attention": "pytorch (sageattention missing)", "fp8_matmul": "auto (none on CPU)",
            "torch_compile": "inductor",
        }  # fmt: skip
    finally:
        await supervisor.stop()
    assert "DARKROOM_ATTENTION=sage asks for sageattention" in caplog.text
    argv = next(line for line in worker.recent_logs(100) if line.startswith("argv") or " argv " in line)
    assert "--use-sage-attention" not in argv and "--fast" not in argv and argv.endswith("inductor")


def test_speed_plan_on_a_gpu_with_the_attention_package_present(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from server.engine import speed

    monkeypatch.setitem(speed.ATTENTION_PACKAGES, "flash", "json")  # a package every interpreter has
    plan = speed.plan_speed(load_settings({}, attention="flash"), sys.executable, gpu=True)
    assert plan.flags == ("--use-flash-attention", "--fast", "fp8_matrix_mult")
    assert plan.environ == {"DARKROOM_FP8_MATMUL": "auto"} and plan.shown["attention"] == "flash"
    off = speed.plan_speed(load_settings({}, fp8_matmul="off"), sys.executable, gpu=True)
    assert off.flags == () and off.shown == {
        "attention": "pytorch",
        "fp8_matmul": "off",
        "torch_compile": "off",
    }
    with pytest.raises(
        ConfigError, match="DARKROOM_ATTENTION='xformers': expected one of pytorch, sage, flash"
    ):
        speed.plan_speed(load_settings({}, attention="xformers"), sys.executable, gpu=False)
