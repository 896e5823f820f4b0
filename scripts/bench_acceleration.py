"""fal's ``acceleration`` levels on the demo twins: the CPU wall time of each level against ``none``.

    .venv/bin/python scripts/bench_acceleration.py [--rounds 5] [--steps 12]

Starts `darkroom serve` with one CPU worker (loopback only), then for every demo twin that has the field
runs the same request at each level, the levels interleaved round by round (each round its own seed, so
the worker's cache of the last prompt never answers), and prints the median seconds per request, the
ratio to ``none`` and the model evaluations the response's timings (images) report.

What it does not measure: the speed and quality trade-off on real weights. The demo twins' tiny
random-weight models take thresholds of their own (server/workflows/acceleration.py,
RANDOM_WEIGHT_THRESHOLDS), their steps take milliseconds, so most of a request's time is fixed cost
(the VAE, the save, the facade), and no image quality is looked at. Needs `make setup` first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench_cold_start import ROOT, free_port, post_json, stop, wait_for

sys.path.insert(0, str(ROOT))

from server.engine.models import load_manifest  # noqa: E402
from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints  # noqa: E402

# Small requests: 64 px images, one-frame videos.
EXTRA: dict[str, dict[str, Any]] = {"video": {"aspect_ratio": "1:1", "num_frames": 1}}


def demo_levels() -> dict[str, tuple[list[str], int]]:
    """Each demo twin that has acceleration (and needs no input file): its levels and most steps."""
    found = {}
    for app_id, endpoint in load_endpoints(WORKFLOWS_DIR, load_manifest()).items():
        params = endpoint.params
        if not app_id.startswith("darkroom/demo-") or "acceleration" not in params:
            continue
        if any(spec.required and spec.type.endswith(("_url", "_urls")) for spec in params.values()):
            continue  # an input file to fetch (image, video, audio)
        if endpoint.output.kind == "image":
            continue  # one image (Wan's text-to-image): neither the images nor the video answer below
        found[app_id] = (
            list(params["acceleration"].values or []),
            int(params["num_inference_steps"].le or 12),
        )
    return found


def bench(base: str, app_id: str, levels: list[str], rounds: int, steps: int) -> dict[str, dict[str, Any]]:
    seconds: dict[str, list[float]] = {level: [] for level in levels}
    evaluations: dict[str, set[tuple[int, int]]] = {level: set() for level in levels}
    kind = "video" if "wan" in app_id else "image"
    for seed in range(rounds + 1):  # round 0 loads the models and is not counted
        for level in levels:
            body = {"prompt": "a lighthouse at dusk", "seed": seed, "num_inference_steps": steps,
                    "acceleration": level, **EXTRA.get(kind, {})}  # fmt: skip
            elapsed, payload = post_json(f"{base}/run/{app_id}", body)
            if seed:
                seconds[level].append(elapsed)
                timings = payload.get("timings", {})
                if "model_evaluations" in timings:
                    evaluations[level].add(
                        (timings["model_evaluations"], timings["model_evaluations_reused"])
                    )
    none = statistics.median(seconds["none"])
    return {
        level: {"median_s": statistics.median(runs), "ratio": statistics.median(runs) / none,
                "evaluated_reused": sorted(evaluations[level])}
        for level, runs in seconds.items()
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="steps per request, at most each demo's")
    args = parser.parse_args()
    port = free_port()
    env = dict(os.environ, DARKROOM_WORKER_BASE_PORT=str(free_port()))
    command = [str(ROOT / ".venv/bin/darkroom"), "serve", "--port", str(port), "--workers", "1", "--cpu"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results: dict[str, Any] = {}
    try:
        wait_for(f"http://127.0.0.1:{port}/ready")
        for app_id, (levels, most) in demo_levels().items():
            steps = min(args.steps, most)
            results[app_id] = bench(f"http://127.0.0.1:{port}", app_id, levels, args.rounds, steps)
    finally:
        stop(process)
    print(f"{'demo twin':34}{'level':>9}{'median s':>10}{'vs none':>9}  evaluated/reused (images)")
    print(f"(steps: {args.steps}, or the demo's most: Z-Image Turbo's is 8)")
    for app_id, levels in results.items():
        for level, row in levels.items():
            counts = ", ".join(f"{e}/{r}" for e, r in row["evaluated_reused"]) or "-"
            print(f"{app_id:34}{level:>9}{row['median_s']:10.3f}{row['ratio']:9.2f}  {counts}")
    print(
        f"\n{args.rounds} rounds of {args.steps} steps on this CPU. Quality and speed on real weights are "
        "not measured here: the tiny random-weight models use thresholds of their own and their steps "
        "are a small part of each request."
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
