"""Kill drill for LoRA training (issue 28): a trainer request whose ComfyUI worker is SIGKILLed mid-
training runs again from the start on the restarted worker and completes.

Against the real stack (`darkroom serve`, one CPU ComfyUI worker, the tiny models): the demo FLUX.2
trainer is queued; once its status logs show training under way, the worker's process group gets
SIGKILL. The supervisor restarts the worker, the generator runs the request again (from the start:
ComfyUI's trainer writes no checkpoints), and the request completes with its LoRA and a config whose
loss curve has every step. Its usage row counts the steps of both tries (both ran).

    .venv/bin/python scripts/drill_train_kill.py [--steps 24] [--models-dir data/models]

Prints one line of figures (`FIGURES {...}`) and exits non-zero on any failure. Not in `make test` (a
worker restart and two training runs: about a minute on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from drill_serve import KEY, ROOT, Server, drilled

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from test_lora_training import request_body  # noqa: E402  (the e2e test's zip and settings)

TRAINER = "darkroom/demo-flux-2-trainer"
HEADERS = {"Authorization": f"Key {KEY}"}
WAIT_S = 900.0


async def drill(server: Server, steps: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"steps": steps, "failures": []}
    failures: list[str] = figures["failures"]
    base = f"{server.base}/queue/{TRAINER}"
    async with aiohttp.ClientSession(headers=HEADERS, timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def status() -> dict[str, Any]:
            async with http.get(f"{base}/requests/{request_id}/status", params={"logs": "1"}) as response:
                body: dict[str, Any] = await response.json()
                return body

        async with http.post(base, json=request_body(steps=steps)) as response:
            assert response.status == 200, await response.text()
            request_id = (await response.json())["request_id"]
        async with asyncio.timeout(WAIT_S):
            while not any(
                e["message"].startswith("Training: step") for e in (await status()).get("logs") or []
            ):
                await asyncio.sleep(0.2)
            async with http.get(f"{server.base}/ready") as response:
                (before,) = (await response.json())["workers"]
            os.killpg(before["pid"], signal.SIGKILL)  # the worker runs in its own session
            killed = time.monotonic()
            while (now := await status())["status"] != "COMPLETED":
                await asyncio.sleep(0.5)
        figures["completed_after_kill_s"] = round(time.monotonic() - killed, 1)
        async with http.get(f"{base}/requests/{request_id}") as response:
            result = await response.json()
            figures["result_status"] = response.status
        async with http.get(f"{server.base}/ready") as response:
            (after,) = (await response.json())["workers"]
        figures["worker_restarts"] = after["restarts"] - before["restarts"]
        logs = [e["message"] for e in now.get("logs") or []]
        figures["lost_worker_logged"] = sum("Lost its ComfyUI worker" in line for line in logs)
        if response.status == 200 and "config_file" in result:
            async with http.get(result["config_file"]["url"]) as response:
                config = json.loads(await response.read())
            figures["loss_curve_steps"] = len(config["loss"])
        await asyncio.sleep(1.5)  # the meter's flush
        async with http.get(f"{server.base}/usage", params={"group_by": "endpoint"}) as response:
            rows = [r for r in (await response.json())["rows"] if r["endpoint"] == TRAINER]
        figures["metered_training_steps"] = rows[0]["training_steps"] if rows else None
    if figures["result_status"] != 200 or "diffusers_lora_file" not in result:
        failures.append(f"the request did not complete with a LoRA: {figures['result_status']} {result}")
    if figures["worker_restarts"] < 1:
        failures.append("the worker was not restarted")
    if figures["lost_worker_logged"] != 1:
        failures.append(f"the request was run again {figures['lost_worker_logged']} times, expected once")
    if figures.get("loss_curve_steps") != steps:
        failures.append(f"the config's loss curve has {figures.get('loss_curve_steps')} steps, not {steps}")
    if not (figures["metered_training_steps"] or 0) > steps:
        failures.append(f"metered training steps {figures['metered_training_steps']}: both tries' expected")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    started = time.monotonic()
    figures = drilled("train-kill", Path(args.models_dir), {}, lambda server: drill(server, args.steps))
    figures["seconds"] = round(time.monotonic() - started, 1)
    print("FIGURES " + json.dumps(figures), flush=True)
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
