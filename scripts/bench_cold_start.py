"""Cold start: `darkroom serve` to ready and first-request latency against warm latency, beside ComfyUI's
own start-up and first/warm prompt measured the same way in the same run.

    .venv/bin/python scripts/bench_cold_start.py [--warm-requests 10]

Needs `make setup` first (ComfyUI installed, tiny models built). Binds only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.engine.install import ensure_comfyui  # noqa: E402
from server.engine.models import load_manifest  # noqa: E402
from server.settings import load_settings  # noqa: E402
from server.workflows.mapping import load_endpoints  # noqa: E402

APP_ID = "darkroom/demo-flux-2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout_s: float = 300.0) -> float:
    """Seconds until url answers 200 (polled every 50 ms)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def post_json(url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        payload = json.loads(response.read())
    return time.perf_counter() - started, payload


def comfy_prompt(base: str, prompt: dict[str, Any]) -> float:
    """Submit to ComfyUI directly and poll its history until the prompt is done."""
    prompt_id = str(uuid.uuid4())
    started = time.perf_counter()
    post_json(f"{base}/prompt", {"prompt": prompt, "prompt_id": prompt_id, "client_id": "bench"})
    while True:
        with urllib.request.urlopen(f"{base}/history/{prompt_id}", timeout=10) as response:
            history = json.loads(response.read())
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return time.perf_counter() - started
        time.sleep(0.005)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def bench_comfyui(warm: int) -> dict[str, float]:
    settings = load_settings()
    root = ensure_comfyui(settings, install_requirements=False)
    endpoint = load_endpoints(ROOT / "workflows", load_manifest())[APP_ID]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp)
        (base_dir / "custom_nodes").mkdir()
        extra = base_dir / "extra.yaml"
        models = settings.models_path
        extra.write_text(
            "darkroom:\n"
            f"  base_path: {models}\n  diffusion_models: diffusion_models\n  text_encoders: text_encoders\n"
            f"  clip: text_encoders\n  vae: vae\n  loras: loras\n  custom_nodes: {ROOT / 'custom_nodes'}\n"
        )
        port = free_port()
        command = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-auto-launch",
            "--base-directory",
            tmp,
            "--output-directory",
            f"{tmp}/out",
            "--database-url",
            "sqlite:///:memory:",
            "--disable-api-nodes",
            "--extra-model-paths-config",
            str(extra),
        ]
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready_s = wait_for(f"http://127.0.0.1:{port}/system_stats")
            base = f"http://127.0.0.1:{port}"
            latencies = []
            for seed in range(warm + 1):
                prompt, _ = endpoint.build_prompt(
                    endpoint.validate({"prompt": "a lighthouse", "seed": seed}), load_manifest()
                )
                latencies.append(comfy_prompt(base, prompt))
        finally:
            stop(process)
    return {"ready_s": ready_s, "first_s": latencies[0], "warm_median_s": statistics.median(latencies[1:])}


def bench_darkroom(warm: int) -> dict[str, float]:
    port = free_port()
    env = dict(os.environ, DARKROOM_WORKER_BASE_PORT=str(free_port()))
    command = [str(ROOT / ".venv/bin/darkroom"), "serve", "--port", str(port), "--workers", "1", "--cpu"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        ready_s = wait_for(f"http://127.0.0.1:{port}/ready")
        latencies = [
            post_json(f"http://127.0.0.1:{port}/run/{APP_ID}", {"prompt": "a lighthouse", "seed": seed})[0]
            for seed in range(warm + 1)
        ]
    finally:
        stop(process)
    return {"ready_s": ready_s, "first_s": latencies[0], "warm_median_s": statistics.median(latencies[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warm-requests", type=int, default=10)
    args = parser.parse_args()
    comfy = bench_comfyui(args.warm_requests)
    darkroom = bench_darkroom(args.warm_requests)
    print(f"{'':28}{'ComfyUI alone':>16}{'darkroom serve':>16}{'difference':>12}")
    for key, label in (
        ("ready_s", "start to ready (s)"),
        ("first_s", "first request (s)"),
        ("warm_median_s", f"warm median of {args.warm_requests} (s)"),
    ):
        print(f"{label:28}{comfy[key]:16.3f}{darkroom[key]:16.3f}{darkroom[key] - comfy[key]:+12.3f}")


if __name__ == "__main__":
    main()
