"""`darkroom serve` for the drills: the real stack on loopback (one CPU ComfyUI worker, the tiny demo
models, an API key), its log kept under data/drills/<name>-serve.log to read afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.settings import PINNED_COMFYUI_COMMIT  # noqa: E402
from tests.serve_process import ServeProcess  # noqa: E402

KEY = "drill-key-0f3c9a"
LOGS = ROOT / "data" / "drills"
COMFYUI = Path(
    os.environ.get("DARKROOM_COMFYUI_DIR") or ROOT / "data" / "comfyui" / f"ComfyUI-{PINNED_COMFYUI_COMMIT}"
)


class Server(ServeProcess):
    """A drill's `darkroom serve`: the drills' API key, its log kept as data/drills/<name>-serve.log."""

    def __init__(
        self, name: str, data_dir: Path, models_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        log_path = LOGS / f"{name}-serve.log"
        super().__init__(data_dir, models_dir, COMFYUI, log_path, {"DARKROOM_API_KEYS": KEY, **(env or {})})
        self.name = name

    def log_has(self, text: str) -> bool:
        return text in self.log()

    def facade_tracebacks(self) -> int:
        """Tracebacks the facade logged, indented under their record (its workers' lines, ComfyUI's own import
        noise among them, are tagged "[worker N]" and aside)."""
        return sum(1 for line in self.log().splitlines() if line.startswith("    Traceback"))  # LogFormatter


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
    unframed, controls = server.log_scan()
    figures.update(
        key_in_log=server.log_has(KEY), facade_tracebacks=server.facade_tracebacks(),
        unframed_log_lines=len(unframed), raw_control_characters_in_log=controls,
    )  # fmt: skip
    failures = figures.setdefault("failures", [])
    if figures["key_in_log"]:
        failures.append("the API key is in the server's log")
    if unframed:
        failures.append(f"{len(unframed)} log line(s) no log record began (forged?): {unframed[:3]}")
    if controls:
        failures.append(f"{controls} raw control character(s) in the server's log: {server.log_path}")
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
