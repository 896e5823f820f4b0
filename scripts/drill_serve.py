"""`darkroom serve` for the drills: the real stack on loopback (one CPU ComfyUI worker, the tiny demo
models, an API key), its log kept under data/drills/<name>-serve.log to read afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.engine.worker import free_port  # noqa: E402
from server.settings import PINNED_COMFYUI_COMMIT  # noqa: E402

KEY = "drill-key-0f3c9a"
READY_TIMEOUT_S = 240.0
LOGS = ROOT / "data" / "drills"
COMFYUI = Path(
    os.environ.get("DARKROOM_COMFYUI_DIR") or ROOT / "data" / "comfyui" / f"ComfyUI-{PINNED_COMFYUI_COMMIT}"
)


@dataclass
class Server:
    """One `darkroom serve` process; ``start`` again after ``stop``/``kill`` reuses its data and port."""

    name: str
    data_dir: Path
    models_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    worker_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return LOGS / f"{self.name}-serve.log"

    def start(self, *, append_log: bool = False) -> None:
        """Start it and wait until /ready answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")} | {
            "DARKROOM_API_KEYS": KEY, "DARKROOM_MODELS_DIR": str(self.models_dir),
            "DARKROOM_COMFYUI_DIR": str(COMFYUI), "DARKROOM_WORKER_BASE_PORT": str(self.worker_port),
            "OMP_NUM_THREADS": "1", **self.env,
        }  # fmt: skip
        command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port",
                   str(self.port), "--cpu", "--workers", "1", "--data-dir", str(self.data_dir)]  # fmt: skip
        LOGS.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab" if append_log else "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"darkroom serve exited with {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.base + "/ready", timeout=5) as r:
                if r.status == 200:
                    return
            time.sleep(0.3)
        self.kill()
        raise SystemExit(f"darkroom serve not ready in {READY_TIMEOUT_S:g} s; see {self.log_path}")

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (it drains: running requests finish first), then SIGKILL past ``timeout_s``."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL the facade only, as a crash would (its ComfyUI worker dies with it: see worker.py)."""
        if self.process is None:
            return 0
        self.process.kill()
        return self.process.wait()

    def log_has(self, text: str) -> bool:
        return text in self.log_path.read_text(errors="replace")

    def facade_tracebacks(self) -> int:
        """Tracebacks the facade logged (its workers' lines, ComfyUI's own import noise among them, aside)."""
        with self.log_path.open(errors="replace") as log:
            return sum(1 for line in log if line.startswith("Traceback"))


Drill = Callable[[Server], Coroutine[Any, Any, dict[str, Any]]]


def drilled(name: str, models_dir: Path, env: Mapping[str, str], drill: Drill) -> dict[str, Any]:
    """Run ``drill`` against a fresh server (a temporary data folder), stopped afterwards: its figures,
    with ``key_in_log`` and ``facade_tracebacks`` added and a failure for each."""
    with tempfile.TemporaryDirectory(prefix=f"drill-{name}-") as tmp:
        server = Server(name, Path(tmp), models_dir, env)
        server.start()
        try:
            figures = asyncio.run(drill(server))
        finally:
            server.stop()
    figures.update(key_in_log=server.log_has(KEY), facade_tracebacks=server.facade_tracebacks())
    failures = figures.setdefault("failures", [])
    if figures["key_in_log"]:
        failures.append("the API key is in the server's log")
    if figures["facade_tracebacks"]:
        failures.append(f"{figures['facade_tracebacks']} traceback(s) in the server's log: {server.log_path}")
    return figures


@contextlib.contextmanager
def serving(name: str, data_dir: Path, models_dir: Path, **env: str) -> Iterator[Server]:
    """A started server, stopped (drained) on leaving."""
    server = Server(name, data_dir, models_dir, {f"DARKROOM_{k.upper()}": v for k, v in env.items()})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_database(url: str | None) -> Iterator[str]:
    """``url``, or a fresh database on a throwaway PostgreSQL cluster (Debian's postgresql package)
    started for the duration, on loopback."""
    if url:
        yield url
        return
    from tests.postgres import postgres_or_skip, running_postgres

    with running_postgres(postgres_or_skip()) as server:
        yield server.database()
