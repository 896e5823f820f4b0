"""`darkroom serve` as a real subprocess on loopback, for the e2e tests and the drills (scripts/ import
it too): this checkout's server (`python -m server.cli` from the project root), one CPU worker, its own
ports, data dir and log; started and polled until /ready answers 200, then drained (SIGTERM) or
killed. ``start`` again after a stop or a kill reuses its data dir and ports, as a restart would."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.engine.worker import free_port
from server.settings import PROJECT_ROOT
from tests import log_scan

READY_TIMEOUT_S = 240.0
# How each line of a `darkroom serve` log begins: a record's time (logging's asctime), or the indent of
# a traceback under its record (server.security.untrusted.LogFormatter).
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |    ")
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f]")


@dataclass
class ServeProcess:
    data_dir: Path
    models_dir: Path
    comfyui_dir: Path
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)  # over this environment less its DARKROOM_*
    args: Sequence[str] = ()  # more flags for `serve` (TLS: --tls-cert, --tls-key)
    ssl_context: ssl.SSLContext | None = None  # set: it serves https, trusted through this
    new_session: bool = False  # its own process group (to check that nothing of it outlives it)
    port: int = field(default_factory=free_port)
    worker_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self, *, append_log: bool = False, wait: bool = True) -> None:
        """Start it; with ``wait``, until /ready answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")} | {
            "DARKROOM_MODELS_DIR": str(self.models_dir), "DARKROOM_COMFYUI_DIR": str(self.comfyui_dir),
            "DARKROOM_WORKER_BASE_PORT": str(self.worker_port), "OMP_NUM_THREADS": "1", **self.env,
        }  # fmt: skip
        command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port",
                   str(self.port), "--cpu", "--workers", "1", "--data-dir", str(self.data_dir),
                   *self.args]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab" if append_log else "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Poll /ready until 200; its body. RuntimeError, with the log's tail, if it exits or times out."""
        assert self.process is not None, "not started"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"darkroom serve exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                status, body = self.get_json("/ready")
                if status == 200:
                    return dict(body)
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"darkroom serve not ready in {timeout_s:g} s:\n{self.tail()}")

    def get_json(self, path: str) -> tuple[int, Any]:
        """GET ``path`` (with its first key, if it has keys): its status and JSON body."""
        keys = [k for k in self.env.get("DARKROOM_API_KEYS", "").split(",") if k.strip()]
        headers = {"Authorization": f"Key {keys[0].strip()}"} if keys else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (it drains: running requests finish first), then SIGKILL past ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()
        self._scan_log()
        return code

    def kill(self) -> int:
        """SIGKILL the facade only, as a crash would (its ComfyUI worker dies with it: see worker.py)."""
        if self.process is None:
            return 0
        self.process.kill()
        code = self.process.wait()
        self._scan_log()
        return code

    def _scan_log(self) -> None:
        """Give the suite's log scan (tests/log_scan.py) this log, before a temporary folder takes it."""
        keys = [
            entry.split()[0] for entry in self.env.get("DARKROOM_API_KEYS", "").split(",") if entry.strip()
        ]
        log_scan.scan_serve_log(self.log_path, keys, *self.log_scan())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_scan(self) -> tuple[list[str], int]:
        """What a request must never leave in the log: lines no log record began (darkroom writes each
        record on one line, a traceback indented under it, so another line is forged or stray), and raw
        control characters (their count)."""
        text = self.log()
        unframed = [line for line in text.splitlines() if line and not _RECORD_START.match(line)]
        return unframed, len(_RAW_CONTROL.findall(text))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
