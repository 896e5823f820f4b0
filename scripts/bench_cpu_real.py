"""`bench_gpu.py --cpu-real-size`: real endpoints' whole graphs at real size on this CPU machine.

For each endpoint below it writes every model file the endpoint binds (diffusion model, text encoders,
VAE) with random values, the released key layouts, shapes and storage dtypes (``real_layouts.py``),
under the manifest's file names in a fresh models folder; starts ``darkroom serve`` on loopback over that
folder (one CPU worker); and runs the endpoint's own graph: its mapping, darkroom's loaders with
ComfyUI's detection at real widths, its fp8 handling, the text encoders, the sampler, the VAE decode and
the encoder of the output. Where fal's bounds forbid a small run (Wan 2.2 5B: 580p or 720p, 17 frames
or more, 2 steps or more), it runs a *published copy* of the endpoint: the graph the editor gets for it
(``GET /endpoints/{app_id}/workflow``), the latent size and the input nodes' bounds made small, published
under ``bench/...``. It prints the request's wall time, the worker's peak RSS against the files' sizes
and what came back.

    .venv/bin/python scripts/bench_gpu.py --cpu-real-size [--json real.json]
    .venv/bin/python scripts/bench_cpu_real.py [APP_ID ...]   # some cases; JSON on stdout

``DARKROOM_BENCH_MODELS_DIR`` keeps the files there for the next run (reused when their size matches).
Needs about 19 GB of free disk under $TMPDIR and about 20 GB of RAM; the worker is the OOM killer's
first choice, so a short machine loses the run, not its other processes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import real_layouts  # noqa: E402
from bench_gpu import COMFYUI, import_comfy  # noqa: E402

from server.engine.models import load_manifest  # noqa: E402
from tests.serve_process import ServeProcess  # noqa: E402

RUN_TIMEOUT_S = 3600
Prompt = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Case:
    app_id: str
    models: tuple[str, ...]  # manifest names
    body: dict[str, Any]
    small: Callable[[Prompt], None] | None = None  # set: run a published copy made small by this


def _wan_small(prompt: Prompt) -> None:
    """64 x 64, one frame, one step: the latent node's size and the input nodes' lower bounds."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "Wan22ImageToVideoLatent":
            inputs.update(width=64, height=64)
        if node["class_type"] == "DarkroomInputInt" and inputs["field"] in (
            "num_frames",
            "num_inference_steps",
        ):
            inputs.update(min=1, value=1)


CASES = (
    Case(
        "fal-ai/flux/schnell",
        ("flux1-schnell", "clip-l", "t5xxl-fp8", "flux1-ae"),
        {
            "prompt": "a lighthouse at dusk",
            "image_size": {"width": 64, "height": 64},
            "num_inference_steps": 1,
            "seed": 1,
            "enable_safety_checker": False,
        },
    ),  # fmt: skip
    Case(
        "fal-ai/wan/v2.2-5b/text-to-video",
        ("wan22-ti2v-5b", "umt5-xxl-fp8", "wan22-vae"),
        {"prompt": "a red fox in the snow", "num_frames": 1, "num_inference_steps": 1, "seed": 1},
        small=_wan_small,
    ),
)


def _call(base: str, method: str, path: str, body: Any = None, timeout_s: float = 60) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _worker(serve: ServeProcess) -> psutil.Process:
    assert serve.process is not None
    children = psutil.Process(serve.process.pid).children(recursive=True)
    return next(p for p in children if "main.py" in " ".join(p.cmdline()))


class _PeakRss(threading.Thread):
    """The worker's peak resident set (VmHWM), sampled every 0.2 s while it lives: kept if it dies."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.done = process, 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                status = Path(f"/proc/{self.process.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():  # a zombie's status has no VmHWM
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def _published_copy(serve: ServeProcess, case: Case) -> str:
    """Publish the endpoint's own graph made small; its /run path."""
    assert case.small is not None
    status, got = _call(serve.base, "GET", f"/endpoints/{case.app_id}/workflow")
    assert status == 200, got
    prompt: Prompt = got["prompt"]
    case.small(prompt)
    name = "bench/" + case.app_id.split("/", 1)[1].replace("/", "-").replace(".", "")
    status, published = _call(serve.base, "POST", "/workflows", {"name": name, "prompt": prompt})
    assert status == 201, published
    return str(urllib.parse.urlsplit(published["urls"]["run"]).path)


def run_case(case: Case, tmp: Path, log_dir: Path) -> dict[str, Any]:
    """Write the case's files, serve them, run the graph once; the figures."""
    manifest = load_manifest()
    models_dir = Path(os.environ.get("DARKROOM_BENCH_MODELS_DIR", tmp / "models"))
    written: dict[str, int] = {}
    started = time.perf_counter()
    for name in case.models:
        layout, raw = real_layouts.FILES[name]()
        path = models_dir / manifest.get(name).file
        kept = path.is_file() and path.stat().st_size == real_layouts.size(layout, raw)
        written[name] = path.stat().st_size if kept else real_layouts.write(path, layout, raw)
        print(f"  wrote {manifest.get(name).file} ({written[name] / 1e9:.2f} GB)", flush=True)
    write_s = time.perf_counter() - started
    serve = ServeProcess(
        data_dir=tmp / "data", models_dir=models_dir, comfyui_dir=COMFYUI, log_path=tmp / "serve.log",
        env={"OMP_NUM_THREADS": str(os.cpu_count() or 1), "DARKROOM_RUN_TIMEOUT_S": str(RUN_TIMEOUT_S),
             "DARKROOM_WORKER_HANG_TIMEOUT_S": "900"},
    )  # fmt: skip
    serve.start()
    try:
        worker = _worker(serve)
        Path(f"/proc/{worker.pid}/oom_score_adj").write_text("1000")
        sampler = _PeakRss(worker)
        time.sleep(0.5)
        rss_idle = sampler.peak
        run_path = _published_copy(serve, case) if case.small else f"/run/{case.app_id}"
        started = time.perf_counter()
        status, body = _call(serve.base, "POST", run_path, case.body, timeout_s=RUN_TIMEOUT_S)
        run_s = time.perf_counter() - started
        alive = worker.is_running()
    finally:
        peak = sampler.stop() if "sampler" in locals() else 0
        serve.stop()
        shutil.copy(serve.log_path, log_dir / f"real-{case.app_id.replace('/', '_')}.log")
    files = sum(written.values())
    result: dict[str, Any] = {
        "app_id": case.app_id, "ran": "a published copy, made small" if case.small else "the endpoint",
        "request": case.body, "status": status, "files_bytes": written, "write_s": round(write_s, 1),
        "run_s": round(run_s, 1), "worker_alive_after": alive, "worker_peak_rss": peak,
        "worker_rss_at_ready": rss_idle,
        "peak_rss_over_files": round(peak / files, 2),
        "output": {k: v for k, v in body.items() if k in ("images", "video", "timings")}
        if status == 200 else body,
        "log": [line for line in serve.log().splitlines() if "loaded" in line or "executed in" in line][-12:],
    }  # fmt: skip
    return result


def main(log_dir: Path, only: Sequence[str] = ()) -> dict[str, Any]:
    """Every case in turn, each in a fresh folder; its serve log is kept in ``log_dir``."""
    import_comfy(cpu=True)
    results: dict[str, Any] = {}
    for case in (c for c in CASES if not only or c.app_id in only):
        print(f"{case.app_id}:", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="darkroom-real-", dir=os.environ.get("TMPDIR")))
        try:
            results[case.app_id] = run_case(case, tmp, log_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shown = {k: v for k, v in results[case.app_id].items() if k not in ("log", "request")}
        print(f"  {json.dumps(shown)}", flush=True)
    return results


if __name__ == "__main__":
    print(json.dumps(main(Path.cwd(), sys.argv[1:]), indent=2))
