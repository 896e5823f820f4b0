"""One ComfyUI worker process: its port, directories, process group, log capture and client.

Started in its own process group (so stop() reaches anything it spawns) with PDEATHSIG=SIGKILL (so
even a SIGKILLed facade leaves no orphans). Its output is tagged with the worker id and goes to the
``darkroom.worker.<i>`` logger, to ``<base>/comfyui.log`` and to a ring buffer for error messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import aiohttp

from server.engine.client import ABANDON_WAIT_S, ComfyClient
from server.engine.speed import Speed
from server.errors import WorkerConnectionError, WorkerResponseError, WorkerStartError

_PR_SET_PDEATHSIG = 1
_READY_POLL_S = 0.25
_LOG_TAIL_LINES = 30
_LOG_RING_LINES = 500
_ALIVE_CHECK_S = 10.0  # a worker busy sampling still answers /system_stats within this
_READ_LIMIT_BYTES = 2**20
# ComfyUI's start-up line for a custom-nodes module that failed: "  0.1 seconds (IMPORT FAILED): /path"
_FAILED_IMPORT = re.compile(r"\((?:IMPORT|PRESTARTUP) FAILED\): (.+)$")


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


def prepare_user_directory(user_dir: Path) -> None:
    """What the browser editor reads from a new user directory, so a first visit asks for nothing that
    is missing: a user stylesheet, the saved-workflow folders and the user's template list."""
    for folder in ("workflows", "subgraphs"):
        (user_dir / folder).mkdir(parents=True, exist_ok=True)
    for name, empty in (("user.css", ""), ("comfy.templates.json", "[]")):
        if not (user_dir / name).exists():
            (user_dir / name).write_text(empty, encoding="utf-8")


def worker_command(
    python: str, comfyui_dir: Path, *, port: int, base_dir: Path, extra_paths_yaml: Path, cpu: bool,
    extra: Iterable[str] = (),
) -> list[str]:  # fmt: skip
    """The command line of one ComfyUI worker; ``extra``: its speed flags (server/engine/speed.py)."""
    command = [
        python, str(comfyui_dir / "main.py"),
        "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        "--base-directory", str(base_dir), "--output-directory", str(base_dir / "output"),
        "--database-url", f"sqlite:///{base_dir / 'comfyui.db'}",
        "--disable-api-nodes", "--extra-model-paths-config", str(extra_paths_yaml),
        *extra,
    ]  # fmt: skip
    return [*command, "--cpu"] if cpu else command


def _port_free(port: int) -> bool:
    """Whether ComfyUI could listen on ``port``. It binds with SO_REUSEADDR (aiohttp's default), so
    connections of a killed worker lingering in TIME_WAIT do not make its port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """A loopback port nothing listens on right now; with ``count``, the first of that many in a row
    (the base port of ``count`` workers, which take base, base+1...)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + count <= 65536 and all(_is_free(port + i) for i in range(1, count)):
            return port


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGKILL when the facade dies (Linux prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def device_name(system_stats: Any) -> str:
    """A worker's device as ComfyUI's ``/system_stats`` names it, without the torch device and the
    allocator: ``cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync`` -> ``NVIDIA H100 80GB HBM3``; ``cpu``
    ("" when the answer names none)."""
    devices = system_stats.get("devices") if isinstance(system_stats, Mapping) else None
    first = devices[0] if isinstance(devices, list) and devices and isinstance(devices[0], dict) else {}
    name = str(first.get("name") or "").split(" : ")[0].strip()
    torch_device, _, rest = name.partition(" ")
    return rest.strip() if ":" in torch_device and rest.strip() else name


class Worker:
    """One ComfyUI subprocess: its port, directories, process, logs and client."""

    def __init__(
        self, worker_id: int, gpu: str | None, base_dir: Path, port: int, session: aiohttp.ClientSession,
        *, interrupt_grace_s: float = ABANDON_WAIT_S, speed: Speed | None = None,
    ):  # fmt: skip
        self.id = worker_id
        self.speed = speed or Speed()
        self.gpu = gpu
        self.device_kind = "cpu" if gpu is None else "cuda"
        self.device_name = ""  # as its ComfyUI reports it (set when it is ready), e.g. NVIDIA H100 80GB HBM3
        self.base_dir = base_dir
        self.output_dir = base_dir / "output"
        self.log_path = base_dir / "comfyui.log"
        self.state = WorkerState.STARTING
        self.busy = False
        # What placement reads (server/engine/placement.py): the model key of the last prompt it was lent
        # for (None: nothing known loaded) and when it last became idle (time.monotonic()).
        self.warm_key: str | None = None
        self.idle_since_s = 0.0
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.port = port
        self._session = session
        self.interrupt_grace_s = interrupt_grace_s
        self.client = ComfyClient(self.base_url, session, abandon_wait_s=interrupt_grace_s)
        self.log = logging.getLogger(f"darkroom.worker.{worker_id}")
        self._lines: collections.deque[str] = collections.deque(maxlen=_LOG_RING_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._log_file: IO[str] | None = None
        self.first_attempt = asyncio.Event()  # set once the first start succeeded or failed
        self.first_error: WorkerStartError | None = None
        self._last_outputs: set[str] = set()  # the last run's output files (see keep_outputs)
        self.failed_imports: set[str] = set()  # custom-nodes paths this process logged as failed

    def __repr__(self) -> str:
        return f"<Worker {self.id} {self.state.value} {self.base_url} pid={self.pid}>"

    def discard(self, folder: str, names: Iterable[str]) -> None:
        """Delete files darkroom put in this worker's ``folder`` ("input", "output") for a run, or fetched
        from it, once the facade is done with them (files outside the folder are refused, not touched)."""
        root = (self.base_dir / folder).resolve()
        for name in names:
            path = (root / name).resolve()
            if path.is_relative_to(root) and path != root:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def keep_outputs(self, names: Iterable[str]) -> None:
        """Keep the last run's output files and delete the run's before. ComfyUI's cache (classic, the
        one workers run) holds the last prompt's nodes only, and a cached output node answers with the
        file names it saved then: so the next run may name this run's files, never older ones."""
        current = set(names)
        self.discard("output", self._last_outputs - current)
        self._last_outputs = current

    def _clear_runs_files(self) -> None:
        """Before a (re)start: a new process has an empty cache, so no run's files are needed, and those of
        a facade killed mid-run (which never deleted them) go too. Only darkroom's: the output folder and
        input/darkroom; editor users' own uploads elsewhere in input/ stay."""
        self._last_outputs = set()
        for folder in (self.output_dir, self.base_dir / "input" / "darkroom"):
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def recent_logs(self, lines: int = _LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines the worker printed."""
        return list(self._lines)[-lines:]

    def describe(self) -> dict[str, Any]:
        """Status for /ready and logs."""
        return {
            "id": self.id, "state": self.state.value, "busy": self.busy, "pid": self.pid,
            "base_url": self.base_url, "device": f"cuda:{self.gpu}" if self.gpu is not None else "cpu",
            "restarts": self.restarts, "last_exit_code": self.last_exit_code, "warm_key": self.warm_key,
            "speed": dict(self.speed.shown),
        }  # fmt: skip

    async def spawn(
        self, python: str, comfyui_dir: Path, extra_paths_yaml: Path, environ: Mapping[str, str]
    ) -> None:
        """Start the process (not yet ready); picks another port if ours is taken."""
        self._proc = self._pump = None
        self.client.stuck_prompt = None
        self.warm_key = None  # a new process has nothing loaded
        self._clear_runs_files()
        self.failed_imports = set()
        if not _port_free(self.port):
            old, self.port = self.port, free_port()
            self.log.warning("[worker %d] port %d is taken; using %d", self.id, old, self.port)
            self.client = ComfyClient(self.base_url, self._session, abandon_wait_s=self.interrupt_grace_s)
        (self.base_dir / "custom_nodes").mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        prepare_user_directory(self.base_dir / "user" / "default")
        env = {
            **environ, **self.speed.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": self.gpu or ""
        }  # fmt: skip
        command = worker_command(
            python, comfyui_dir, port=self.port, base_dir=self.base_dir, extra_paths_yaml=extra_paths_yaml,
            cpu=self.gpu is None, extra=self.speed.flags,
        )  # fmt: skip
        self.state = WorkerState.STARTING
        self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _drain
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command, cwd=comfyui_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent(),
                limit=_READ_LIMIT_BYTES,
            )  # fmt: skip
        except BaseException:
            self._log_file.close()
            raise
        self._record(f"=== darkroom: started worker {self.id} pid {self._proc.pid} on {self.base_url} ===")
        self._pump = asyncio.create_task(
            self._drain(self._proc, self._log_file), name=f"worker-{self.id}-logs"
        )

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll GET /system_stats until it answers; WorkerStartError with the log tail otherwise."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.returncode is not None:
                await self._flush_logs()
                raise self.start_error(f"exited with code {self._proc.returncode} during start-up")
            with contextlib.suppress(WorkerConnectionError, WorkerResponseError):
                stats = await self.client.system_stats()
                self.device_name = device_name(stats)
                self.state = WorkerState.READY
                return
            if time.monotonic() >= deadline:
                raise self.start_error(f"did not answer GET /system_stats within {timeout_s:g} s")
            await asyncio.sleep(_READY_POLL_S)

    async def check_alive(
        self, timeout_s: float = _ALIVE_CHECK_S, *, reason: str = "does not answer after losing a connection"
    ) -> bool:
        """Whether the worker still answers (after a connection dropped mid-prompt, and on the
        supervisor's watchdog). If not, it is taken out of service (killed, if its process hangs on)
        until the supervisor restarts it."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(WorkerConnectionError, WorkerResponseError, TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.client.system_stats()
                    return True
        self.kill(reason)
        return False

    def kill(self, reason: str) -> None:
        """Take the worker out of service and SIGKILL its process group; the supervisor restarts it."""
        proc = self._proc
        if self.state is WorkerState.READY:
            self.state = WorkerState.RESTARTING
        if proc is not None and proc.returncode is None:
            self.log.error("[worker %d] %s; killing it", self.id, reason)
            self._signal_group(proc.pid, signal.SIGKILL)

    def start_error(self, what: str) -> WorkerStartError:
        """A WorkerStartError naming this worker, with its last log lines."""
        return WorkerStartError(
            f"ComfyUI worker {self.id} ({self.base_url}) {what}; full log: {self.log_path}",
            worker_id=self.id,
            log_tail=self.recent_logs(),
        )

    async def wait_exit(self) -> int:
        """Wait for the process to end (however it ends); returns its exit code."""
        assert self._proc is not None
        code = await self._proc.wait()
        self.last_exit_code = code
        await self._flush_logs()
        return code

    async def terminate(self, timeout_s: float) -> None:
        """SIGTERM the process group, then SIGKILL after ``timeout_s``; safe to call repeatedly."""
        proc, self._proc = self._proc, None  # forget it first: its pid must not be signalled once reused
        if proc is None:
            return
        self._signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            self.log.warning("[worker %d] no exit %g s after SIGTERM; sending SIGKILL", self.id, timeout_s)
        finally:  # even when cancelled: nothing of the worker may outlive this call
            self._signal_group(proc.pid, signal.SIGKILL)
        self.last_exit_code = await proc.wait()
        await self._flush_logs()

    def _signal_group(self, pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    async def _flush_logs(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):  # not wait_for, which can swallow a cancel on 3.11
                    await asyncio.shield(self._pump)

    async def _drain(self, proc: asyncio.subprocess.Process, log_file: IO[str]) -> None:
        """Copy the worker's output, line by line, to its logger, log file and ring buffer."""
        assert proc.stdout is not None
        try:
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line over the read limit: asyncio drops it
                    raw = b"<darkroom: over-long line dropped>\n"
                if not raw:
                    return
                # tqdm redraws with \r: keep the last state of the line
                line = raw.decode("utf-8", "replace").rstrip("\r\n").rsplit("\r", 1)[-1]
                self._record(line, log_file)
        finally:
            log_file.close()

    def _record(self, line: str, log_file: IO[str] | None = None) -> None:
        self._lines.append(line)
        if (failed := _FAILED_IMPORT.search(line)) is not None:
            self.failed_imports.add(failed.group(1).strip())
        self.log.info("[worker %d] %s", self.id, line)
        log_file = log_file or self._log_file
        if log_file is not None and not log_file.closed:
            log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            log_file.flush()
