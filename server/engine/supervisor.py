"""Runs ComfyUI workers as supervised subprocesses and lends them out, one prompt at a time.

Each worker is ComfyUI's ``main.py`` on its own loopback port, base directory and GPU, started in
its own process group with PDEATHSIG=SIGKILL so that even a SIGKILLed facade leaves no orphans.
A worker that dies is restarted with exponential back-off; endpoint code borrows a ready, idle
worker with ``async with supervisor.worker(model_key=...) as w:``. Borrowers are served in arrival
order; which idle worker one gets (warm for its models, else the least recently used) is placement's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from server.engine.node_packs import PackPaths, worker_pythonpath
from server.engine.placement import pick_idle
from server.engine.speed import plan_speed
from server.engine.worker import Worker, WorkerState
from server.errors import ConfigError, WorkerConnectionError, WorkerStartError, WorkerUnavailableError
from server.settings import PROJECT_ROOT, Settings

__all__ = ["Supervisor", "Worker", "WorkerState", "extra_model_paths", "plan_devices", "visible_gpus"]

logger = logging.getLogger(__name__)

_WATCH_INTERVAL_S = 10.0  # how often a ready worker is asked whether it still answers
_STABLE_AFTER_S = 60.0  # a worker up this long has its restart back-off reset


def visible_gpus(environ: Mapping[str, str], *, nvidia_smi: str | None = None) -> list[str]:
    """GPU ids workers may use: CUDA_VISIBLE_DEVICES if set, else what ``nvidia-smi -L`` lists."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        gpus: list[str] = []
        for entry in (e.strip() for e in environ["CUDA_VISIBLE_DEVICES"].split(",")):
            if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
                break
            gpus.append(entry)
        return gpus
    nvidia_smi = nvidia_smi or shutil.which("nvidia-smi")
    if not nvidia_smi:
        return []
    try:
        out = subprocess.run(
            [nvidia_smi, "-L"], capture_output=True, text=True, timeout=15, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("nvidia-smi -L failed (%s); assuming no GPU", e)
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def plan_devices(settings: Settings, gpus: list[str]) -> list[str | None]:
    """One entry per worker: the GPU id it gets, or None for a CPU worker."""
    if settings.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={settings.device!r}: expected auto, cpu or cuda")
    if settings.workers < 0:
        raise ConfigError(f"workers={settings.workers}: expected 0 (automatic) or more")
    if settings.device == "cpu" or (not gpus and settings.device == "auto"):
        return [None] * max(settings.workers, 1)
    if not gpus:
        raise ConfigError(
            "device=cuda but no GPU is visible (CUDA_VISIBLE_DEVICES / nvidia-smi -L); use device=cpu"
        )
    count = settings.workers or len(gpus)
    return [gpus[i % len(gpus)] for i in range(count)]


TRAINED_LORAS_DIR = "trained-loras"  # under the data dir


def extra_model_paths(settings: Settings) -> dict[str, dict[str, str]]:
    """ComfyUI's extra-model-paths config: our model folders, our node pack and the installed third-party
    packs (server/engine/node_packs.py; ComfyUI reads one folder a line)."""
    packs = PackPaths.of(settings).nodes
    return {
        "darkroom": {
            "base_path": str(settings.models_path),
            "diffusion_models": "diffusion_models",
            "text_encoders": "text_encoders",
            "clip": "text_encoders",
            "vae": "vae",
            "loras": "loras",
            "upscale_models": "upscale_models",
            "clip_vision": "clip_vision",
            "safety_checkers": "safety_checkers",
            "audio_encoders": "audio_encoders",
            "checkpoints": "checkpoints",
            "custom_nodes": f"{PROJECT_ROOT / 'custom_nodes'}\n{packs}",
        },
        # LoRAs this server trained (``LoraCache.adopt``): a second LoRA folder, in the data dir, so that
        # training never writes into a models dir that may be shared or read-only.
        "darkroom-trained": {"base_path": str(settings.data_path), "loras": TRAINED_LORAS_DIR},
    }


@dataclass(frozen=True)
class _Waiter:
    """A borrower in line: for any worker (``worker_id`` None) or one, wanting ``model_key`` loaded."""

    future: asyncio.Future[Worker]
    worker_id: int | None
    model_key: str | None


class Supervisor:
    """Starts, watches, restarts and stops the ComfyUI workers; schedules prompts onto them."""

    def __init__(
        self, settings: Settings, comfyui_dir: Path, *, python: str = sys.executable,
        environ: Mapping[str, str] | None = None, stop_timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.comfyui_dir = Path(comfyui_dir)
        self.python = python
        # The environment workers inherit (and CUDA_VISIBLE_DEVICES is read from): a process boundary.
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.stop_timeout_s = stop_timeout_s  # SIGTERM -> SIGKILL grace per worker
        self.workers: tuple[Worker, ...] = ()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: collections.deque[_Waiter] = collections.deque()  # borrowers in arrival order
        self._stopping = False
        self._planned: set[int] = set()  # workers restart_rolling is restarting

    @property
    def ready(self) -> bool:
        """Every worker is up and answering."""
        return bool(self.workers) and all(w.ready for w in self.workers)

    @property
    def idle_workers(self) -> int:
        """How many workers are ready and lent to no one: prompts this host can start right now."""
        return sum(1 for w in self.workers if w.ready and not w.busy)

    def warm_keys(self, *, idle_only: bool = False) -> set[str]:
        """Model keys (``Endpoint.model_key``) loaded on a ready worker (an idle one with ``idle_only``):
        a request with one of these keys starts here without loading its models, once a worker is free."""
        return {
            w.warm_key
            for w in self.workers
            if w.ready and w.warm_key is not None and not (idle_only and w.busy)
        }

    @property
    def workers_dir(self) -> Path:
        return self.settings.data_path / "workers"

    async def start(self, *, wait: bool = True) -> None:
        """Launch the workers; with ``wait``, return once all answer (WorkerStartError otherwise)."""
        if self.workers:
            raise RuntimeError("Supervisor.start() called twice")
        if not (self.comfyui_dir / "main.py").is_file():
            raise ConfigError(
                f"{self.comfyui_dir} is not a ComfyUI checkout (no main.py); run `darkroom comfyui install`"
            )
        devices = plan_devices(self.settings, await asyncio.to_thread(visible_gpus, self.environ))
        self.workers_dir.mkdir(parents=True, exist_ok=True)
        yaml_path = self.workers_dir / "extra_model_paths.yaml"
        yaml_path.write_text(
            yaml.safe_dump(extra_model_paths(self.settings), sort_keys=False), encoding="utf-8"
        )
        speeds = {
            gpu: await asyncio.to_thread(plan_speed, self.settings, self.python, gpu=gpu)
            for gpu in {d is not None for d in devices}
        }
        self._session = aiohttp.ClientSession()
        self.workers = tuple(
            Worker(
                i,
                gpu,
                self.workers_dir / str(i),
                self.settings.worker_base_port + i,
                self._session,
                interrupt_grace_s=self.settings.interrupt_grace_s,
                speed=speeds[gpu is not None],
            )  # fmt: skip
            for i, gpu in enumerate(devices)
        )
        logger.info("starting %d ComfyUI worker(s) from %s", len(self.workers), self.comfyui_dir)
        for speed in speeds.values():
            logger.info("worker speed settings: %s", ", ".join(f"{k} {v}" for k, v in speed.shown.items()))
        self._tasks = [
            asyncio.create_task(self._keep_alive(w, yaml_path), name=f"worker-{w.id}") for w in self.workers
        ]
        if wait:
            try:
                await self.wait_ready()
            except BaseException:
                await self.stop()
                raise

    def worker_environ(self) -> dict[str, str]:
        """What a worker's process inherits: the supervisor's environment, the node packs' requirements
        folder on its PYTHONPATH and where the packs are (for the darkroom pack's GET /darkroom/packs)."""
        packs = PackPaths.of(self.settings)
        packs.nodes.mkdir(parents=True, exist_ok=True)  # ComfyUI lists every custom-nodes folder
        return {
            **self.environ,
            "PYTHONPATH": worker_pythonpath(packs, self.environ),
            "DARKROOM_NODE_PACKS_DIR": str(packs.nodes),
        }

    async def restart_rolling(self, timeout_s: float) -> None:
        """Restart the workers one at a time, each once it is idle, the next once it answers again: the
        others keep serving (to load a changed set of node packs). WorkerStartError if one does not come
        back within ``timeout_s``."""
        for w in self.workers:
            async with self.worker(worker_id=w.id, timeout_s=timeout_s):
                restarts = w.restarts
                self._planned.add(w.id)
                w.kill("restarting to load the node packs")
            deadline = time.monotonic() + timeout_s
            while w.restarts == restarts or not w.ready:
                if time.monotonic() > deadline:
                    raise w.start_error(f"did not come back within {timeout_s:g} s of a rolling restart")
                await asyncio.sleep(0.25)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until every worker's first start finished; raise the first WorkerStartError."""
        async with asyncio.timeout(timeout_s):
            for w in self.workers:
                await w.first_attempt.wait()
        for w in self.workers:
            if w.first_error is not None:
                raise w.first_error

    async def _keep_alive(self, w: Worker, yaml_path: Path) -> None:
        """Run the worker; whenever it fails to start or dies, start it again after a back-off."""
        backoff_s = 1.0
        while True:
            started = time.monotonic()
            await self._run_once(w, yaml_path)
            w.state = WorkerState.RESTARTING
            await w.terminate(self.stop_timeout_s)  # also reaps anything it left in its group
            w.first_attempt.set()
            if w.id in self._planned:  # restart_rolling's: no back-off
                self._planned.discard(w.id)
            else:
                if time.monotonic() - started >= _STABLE_AFTER_S:
                    backoff_s = 1.0
                logger.warning("restarting worker %d in %g s", w.id, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.settings.worker_restart_backoff_max_s)
            w.restarts += 1

    async def _run_once(self, w: Worker, yaml_path: Path) -> None:
        """Start the worker, wait until it answers, then until it exits; logs why it ended."""
        started = time.monotonic()
        try:
            await w.spawn(self.python, self.comfyui_dir, yaml_path, self.worker_environ())
            await w.wait_ready(self.settings.worker_start_timeout_s)
        except (WorkerStartError, OSError) as e:
            error = e if isinstance(e, WorkerStartError) else w.start_error(f"could not be started: {e}")
            if not w.first_attempt.is_set():
                w.first_error = error
            logger.error("%s", error)
            return
        device = w.describe()["device"]
        elapsed_s = time.monotonic() - started
        logger.info(
            "worker %d ready at %s (pid %s, %s) in %.1f s", w.id, w.base_url, w.pid, device, elapsed_s
        )
        w.first_attempt.set()
        w.idle_since_s = time.monotonic()
        self._dispatch()
        watchdog = asyncio.create_task(self._watch(w), name=f"watchdog-{w.id}")
        try:
            code = await w.wait_exit()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        tail = "\n".join(f"    {line}" for line in w.recent_logs())
        logger.error("worker %d (%s) exited with code %s; its last lines:\n%s", w.id, w.base_url, code, tail)

    async def _watch(self, w: Worker) -> None:
        """Kill a worker that is alive but does not answer (hung, stopped, deadlocked) for
        ``worker_hang_timeout_s``, so it restarts and its request runs again, as after a crash."""
        timeout_s = self.settings.worker_hang_timeout_s
        while True:
            await asyncio.sleep(min(_WATCH_INTERVAL_S, timeout_s / 3))
            if not await w.check_alive(timeout_s, reason=f"did not answer for {timeout_s:g} s"):
                return

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and fail anyone waiting for one."""
        if self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.terminate(self.stop_timeout_s) for w in self.workers))
        for w in self.workers:
            w.state = WorkerState.STOPPED
        while self._waiters:
            waiter = self._waiters.popleft().future
            if not waiter.done():
                waiter.set_exception(WorkerUnavailableError("the server is shutting down"))
        if self._session is not None:
            await self._session.close()
        logger.info("all ComfyUI workers stopped")

    @contextlib.asynccontextmanager
    async def worker(
        self, *, timeout_s: float | None = None, worker_id: int | None = None, model_key: str | None = None
    ) -> AsyncIterator[Worker]:
        """Borrow an idle, ready worker (or worker ``worker_id``) for one prompt; waits in arrival order.
        Of several idle workers it gets one warm for ``model_key``, which the worker then counts as
        loaded (None: unknown, as for a raw editor prompt)."""
        w = await self._acquire(timeout_s, worker_id, model_key)
        try:
            yield w
        except WorkerConnectionError:
            await w.check_alive()  # a dead worker must not be handed out before it is restarted
            raise
        finally:
            if (stuck := w.client.stuck_prompt) is not None:
                w.kill(f"prompt {stuck} still ran {w.interrupt_grace_s:g} s after its interrupt")
            self._release(w)

    async def _acquire(self, timeout_s: float | None, worker_id: int | None, model_key: str | None) -> Worker:
        if self._stopping or not self.workers:
            raise WorkerUnavailableError("no ComfyUI workers are running")
        if worker_id is not None and not 0 <= worker_id < len(self.workers):
            raise WorkerUnavailableError(f"no ComfyUI worker {worker_id}: {len(self.workers)} are running")
        waiter: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        entry = _Waiter(waiter, worker_id, model_key)
        self._waiters.append(entry)
        self._dispatch()  # an idle worker goes to the oldest waiter it can serve, maybe this one
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except BaseException as e:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed a worker just as we gave up: pass it on
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            if isinstance(e, TimeoutError):
                raise WorkerUnavailableError(f"no ComfyUI worker became free within {timeout_s} s") from None
            raise

    def _release(self, w: Worker) -> None:
        w.busy = False
        w.idle_since_s = time.monotonic()
        self._dispatch()

    def _idle_worker(self, entry: _Waiter) -> Worker | None:
        idle = [w for w in self.workers if w.ready and not w.busy and entry.worker_id in (None, w.id)]
        return pick_idle(idle, entry.model_key)

    def _dispatch(self) -> None:
        """Hand idle workers to waiters in arrival order; one waiting for a busy worker holds no other."""
        for entry in list(self._waiters):
            if entry.future.done():
                self._waiters.remove(entry)
            elif (w := self._idle_worker(entry)) is not None:
                self._waiters.remove(entry)
                w.busy = True
                w.warm_key = entry.model_key
                entry.future.set_result(w)
