"""The safety checker's cost on the CPU demo: time added per image and memory, beside the same demo
generation without the checker, measured in the same run on one ComfyUI worker.

    .venv/bin/python scripts/safety_cost.py [--runs 5] [--sides 64 512]

Runs darkroom/demo-flux-2's own graph (built by its mapping, one image per request, a new seed each
run so nothing is cached) with enable_safety_checker off, on with the demo's tiny classifier, and on
with a classifier of Falconsai/nsfw_image_detection's real size (ViT-Base/16: 85.8M parameters, fp32),
whose weights are zeros written here: speed and memory do not depend on their values, and the real
file cannot be fetched on a machine without Hugging Face. Memory is the worker's resident set (VmRSS)
and its peak (VmHWM) after each configuration. Needs `make setup` first; binds only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from bench_cold_start import ROOT, comfy_prompt, free_port, stop, wait_for

sys.path.insert(0, str(ROOT))

from server.engine.install import ensure_comfyui  # noqa: E402
from server.engine.models import load_manifest  # noqa: E402
from server.settings import load_settings  # noqa: E402
from server.workflows.mapping import Endpoint, load_endpoints  # noqa: E402
from server.workflows.safety import CHECKER_NODE  # noqa: E402

APP_ID = "darkroom/demo-flux-2"
REAL_SIZE = "bench/vit-base-16-zeros.safetensors"


def vit_base_shapes(labels: int = 2) -> dict[str, tuple[int, ...]]:
    """transformers' ViTForImageClassification at ViT-Base/16, 224 px (Falconsai's), key by key."""
    width, layers, mlp, patch, grid = 768, 12, 3072, 16, 14
    shapes: dict[str, tuple[int, ...]] = {
        "vit.embeddings.cls_token": (1, 1, width),
        "vit.embeddings.position_embeddings": (1, grid * grid + 1, width),
        "vit.embeddings.patch_embeddings.projection.weight": (width, 3, patch, patch),
        "vit.embeddings.patch_embeddings.projection.bias": (width,),
        "vit.layernorm.weight": (width,), "vit.layernorm.bias": (width,),
        "classifier.weight": (labels, width), "classifier.bias": (labels,),
    }  # fmt: skip
    for i in range(layers):
        prefix = f"vit.encoder.layer.{i}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            shapes[f"{prefix}{name}.weight"], shapes[f"{prefix}{name}.bias"] = (width, width), (width,)
        shapes[f"{prefix}attention.output.dense.weight"] = (width, width)
        shapes[f"{prefix}attention.output.dense.bias"] = (width,)
        shapes[f"{prefix}intermediate.dense.weight"], shapes[f"{prefix}intermediate.dense.bias"] = (
            (mlp, width),
            (mlp,),
        )
        shapes[f"{prefix}output.dense.weight"], shapes[f"{prefix}output.dense.bias"] = (width, mlp), (width,)
        for norm in ("layernorm_before", "layernorm_after"):
            shapes[f"{prefix}{norm}.weight"], shapes[f"{prefix}{norm}.bias"] = (width,), (width,)
    return shapes


def memory_mb(pid: int) -> dict[str, float]:
    """The process's resident set now and at its peak, in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def prompt_for(endpoint: Endpoint, side: int, seed: int, checker: str | None) -> dict[str, Any]:
    body = {"prompt": "a lighthouse", "seed": seed, "image_size": {"width": side, "height": side}}
    prompt, _ = endpoint.build_prompt(
        endpoint.validate({**body, "enable_safety_checker": checker is not None}), load_manifest()
    )
    if checker is not None:
        prompt[CHECKER_NODE]["inputs"]["checker_name"] = checker
    return prompt


def measure(base: str, pid: int, endpoint: Endpoint, sides: list[int], runs: int) -> dict[str, Any]:
    """Each configuration warmed up (its memory read after), then timed in turns, so that whatever else
    the machine does slows them alike. Per run and side: a whole generation with the checker off, the
    same request with each checker (ComfyUI reuses everything up to the decoded image, so only the
    checker and the save run), and a whole generation with the ViT-Base checker (a new seed)."""
    configurations = {"off": None, "tiny": "tiny/nsfw-vit.safetensors", "vit-base": REAL_SIZE}
    table: dict[str, Any] = {}
    for name, checker in configurations.items():
        comfy_prompt(base, prompt_for(endpoint, sides[0], 10_000, checker))  # load everything once
        table[f"{name} memory"] = memory_mb(pid)
    times: dict[str, list[float]] = {}
    for run in range(runs):
        for side in sides:
            seed = 2 * (run * 10_000 + side)
            steps = (
                ("off", seed, None), ("vit-base reused", seed, REAL_SIZE),
                ("tiny reused", seed, configurations["tiny"]), ("vit-base", seed + 1, REAL_SIZE),
            )  # fmt: skip
            for name, step_seed, checker in steps:
                elapsed = comfy_prompt(base, prompt_for(endpoint, side, step_seed, checker))
                times.setdefault(f"{name} {side}", []).append(elapsed)
    return {**table, **{key: statistics.median(values) for key, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 512])
    args = parser.parse_args()
    settings = load_settings()
    root = ensure_comfyui(settings, install_requirements=False)
    endpoint = load_endpoints(ROOT / "workflows", load_manifest())[APP_ID]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "custom_nodes").mkdir()
        checkers = Path(tmp) / "safety_checkers"
        (checkers / "bench").mkdir(parents=True)
        (checkers / "tiny").symlink_to(settings.models_path / "safety_checkers" / "tiny")
        zeros = {key: np.zeros(shape, np.float32) for key, shape in vit_base_shapes().items()}
        safetensors.numpy.save_file(zeros, str(checkers / REAL_SIZE))
        real_size_mb = (checkers / REAL_SIZE).stat().st_size / 1e6
        del zeros
        extra = Path(tmp) / "extra.yaml"
        models = settings.models_path
        extra.write_text(
            f"darkroom:\n  base_path: {models}\n  diffusion_models: diffusion_models\n"
            "  text_encoders: text_encoders\n  clip: text_encoders\n  vae: vae\n"
            f"  custom_nodes: {ROOT / 'custom_nodes'}\n"
            f"bench:\n  base_path: {tmp}\n  safety_checkers: safety_checkers\n"
        )
        port = free_port()
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--disable-auto-launch", "--base-directory", tmp, "--output-directory", f"{tmp}/out",
            "--database-url", "sqlite:///:memory:", "--disable-api-nodes",
            "--extra-model-paths-config", str(extra),
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(f"http://127.0.0.1:{port}/system_stats")
            table = measure(f"http://127.0.0.1:{port}", process.pid, endpoint, args.sides, args.runs)
        finally:
            stop(process)
    report(table, args.sides, args.runs, real_size_mb)


def report(table: dict[str, Any], sides: list[int], runs: int, real_size_mb: float) -> None:
    print(
        f"{APP_ID}, one image per request, medians of {runs} runs, seconds; "
        f"ViT-Base file {real_size_mb:.0f} MB"
    )
    header = ("whole: off", "whole: ViT-Base", "added", "reused: tiny", "reused: ViT-Base", "ViT-Base alone")
    print(f"{'':12}" + "".join(f"{h:>18}" for h in header))
    for side in sides:
        off, base = table[f"off {side}"], table[f"vit-base {side}"]
        tiny_reused, base_reused = table[f"tiny reused {side}"], table[f"vit-base reused {side}"]
        row = (off, base, base - off, tiny_reused, base_reused, base_reused - tiny_reused)
        print(f"{f'{side} x {side}':12}" + "".join(f"{value:18.3f}" for value in row))
    print("memory of the worker (MB)   checker off     tiny   ViT-Base   ViT-Base added")
    for key, label in (("VmRSS", "resident after warm-up"), ("VmHWM", "peak so far")):
        off, tiny, base = (table[f"{name} memory"][key] for name in ("off", "tiny", "vit-base"))
        print(f"{label:28}{off:11.0f}{tiny:9.0f}{base:11.0f}{base - off:+17.0f}")
    print(json.dumps({"runs": runs, **table}))


if __name__ == "__main__":
    main()
