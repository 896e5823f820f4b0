"""One prepared GPU benchmark for the day a GPU is lent (issue 26): real-size architectures with random
weights built directly on the device from ComfyUI's own classes (speed does not depend on the weights'
values; no downloads), the text encoders replaced by random conditioning of the real shapes.

    .venv/bin/python scripts/bench_gpu.py [--json bench_gpu.json] [--budget-s 420] [--no-compile]
    .venv/bin/python scripts/bench_gpu.py --smoke [--darkroom URL]   # the same code, tiny, on the CPU

Measures, in one run: FLUX.2 [dev] seconds per step at 1024x1024 and images/min at 28 steps as bf16
(where memory allows), fp8 (fp8 storage, bf16 compute) and fp8-fast (fp8 matmul; compute capability
>= 8.9), and fp8-fast under torch.compile (compile time apart); Z-Image Turbo (8 steps, 1024x1024); Wan 2.2
A14B (one expert: the two share the architecture and each step runs one) at 1280x720 for two short clips,
extrapolated to 81 frames with the fitted formula printed; the load time of a real-layout Z-Image file
from the page cache to the device through darkroom's own loader; peak device memory of each case; and
darkroom's overhead: the same request through darkroom's /queue and as the raw graph POSTed to the
worker's ComfyUI (/prompt), on the FLUX.2 demo twin at its largest size, turned into a ratio against
the real FLUX.2 image time measured above (formula printed). Prints a table, writes JSON. Each case
checks the remaining --budget-s first and is skipped (and says so) when it would not fit: on one H100
the whole run is sized to finish within 8 minutes. Binds only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_overhead import darkroom_for, overhead_case  # noqa: E402

from server.settings import PINNED_COMFYUI_COMMIT  # noqa: E402

COMFYUI = ROOT / "data" / "comfyui" / f"ComfyUI-{PINNED_COMFYUI_COMMIT}"
FLUX_STEPS, ZIMAGE_STEPS, WAN_FRAMES = 28, 8, 81

# Real sizes, as released (ComfyUI's detection reads these from the files: comfy/model_detection.py).
FLUX2_DEV: dict[str, Any] = {
    "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
    "context_in_dim": 15360, "hidden_size": 6144, "mlp_ratio": 3.0, "num_heads": 48, "depth": 8,
    "depth_single_blocks": 48, "axes_dim": [32, 32, 32, 32], "theta": 2000, "patch_size": 1,
    "qkv_bias": False, "guidance_embed": True, "txt_ids_dims": [3], "global_modulation": True,
    "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
    "txt_norm": False,
}  # fmt: skip
WAN_A14B: dict[str, Any] = {
    "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "dim": 5120,
    "ffn_dim": 13824, "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 40, "num_layers": 40,
    "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}  # fmt: skip
ZIMAGE_TURBO: dict[str, Any] = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "n_layers": 30,
    "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "multiple_of": 256,
    "ffn_dim_multiplier": 8.0 / 3.0, "qk_norm": True, "cap_feat_dim": 2560, "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the real ones, or --smoke's (the tiny models' configs, a few pixels)."""

    flux: dict[str, Any]
    wan: dict[str, Any]
    zimage: dict[str, Any]
    flux_context: tuple[int, int]  # (tokens, width) of the text conditioning
    wan_context: tuple[int, int]
    zimage_context: tuple[int, int]
    image_px: int  # FLUX.2 and Z-Image side
    wan_px: tuple[int, int]  # width, height
    wan_frames: tuple[int, int]  # the two short clips the formula is fitted to
    timed_steps: int
    demo_px: int
    demo_steps: int
    requests: int


def real_plan() -> Plan:
    return Plan(
        FLUX2_DEV, WAN_A14B, ZIMAGE_TURBO, (512, 15360), (512, 4096), (128, 2560), 1024, (1280, 720),
        (9, 17), 3, 512, 12, 3,
    )  # fmt: skip


def smoke_plan() -> Plan:
    from darkroom.tiny import diffusion as tiny

    return Plan(
        tiny.FLUX2, tiny._WAN, tiny.ZIMAGE, (8, 192), (8, 64), (16, 64), 64, (64, 48), (5, 9), 1, 64, 2, 1
    )  # fmt: skip


@dataclass
class Result:
    case: str
    values: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""


class Bench:
    """The cases, the device, the clock and what was found."""

    def __init__(self, plan: Plan, device: Any, budget_s: float) -> None:
        self.plan, self.device, self.budget_s = plan, device, budget_s
        self.started = time.perf_counter()
        self.results: list[Result] = []

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def case(self, name: str, needs_s: float, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one case unless the budget is spent; a failure is recorded, never fatal."""
        result = Result(name)
        self.results.append(result)
        started = time.perf_counter()
        if self.left_s() < needs_s:
            result.skipped = f"budget: {self.left_s():.0f} s left, needs ~{needs_s:.0f} s"
        else:
            try:
                result.values = run()
            except Exception as e:  # noqa: BLE001 - one failed case must not lose the others' figures
                result.skipped = f"failed: {type(e).__name__}: {e}"[:300]
            finally:
                release(self.device)
        took_s = time.perf_counter() - started
        print(f"  {name} ({took_s:.1f} s): {result.skipped or result.values}", flush=True)
        return result.values


def import_comfy(cpu: bool) -> None:
    """ComfyUI's tree and the node pack on sys.path; CPU mode set before model_management loads."""
    for path in (str(COMFYUI), str(ROOT / "custom_nodes")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu


def release(device: Any) -> None:
    import comfy.model_management
    import torch

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: Any) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def build(kind: str, unet_config: dict[str, Any], mode: str, device: Any) -> Any:
    """A ComfyUI ModelPatcher of `kind` (flux2, wan, zimage) with random weights made on `device`:
    mode bf16, fp8 (fp8 storage, bf16 compute: ComfyUI's manual cast) or fp8-fast (fp8 matmul: what
    ComfyUI's `fp8_e4m3fn_fast` and `--fast fp8_matrix_mult` choose where the device supports it)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    classes = {
        "flux2": comfy.supported_models.Flux2,
        "wan": comfy.supported_models.WAN21_T2V,
        "zimage": comfy.supported_models.ZImage,
    }
    config = classes[kind](dict(unet_config))
    if mode == "bf16":
        config.set_inference_dtype(torch.bfloat16, None)
    else:
        config.set_inference_dtype(torch.float8_e4m3fn, torch.bfloat16)
        config.optimizations["fp8"] = mode == "fp8-fast"
    with torch.no_grad():
        model = config.get_model({}, "", device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        for p in model.diffusion_model.parameters():
            values = torch.randn(p.shape, generator=gen, device=device, dtype=torch.bfloat16) * 0.02
            p.data = values.to(p.dtype) if p.dim() > 1 else (values.abs() + 1.0).to(p.dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def sample(patcher: Any, latent_shape: tuple[int, ...], context: tuple[int, int], steps: int) -> float:
    """Seconds for one `steps`-step euler run at cfg 1 (one model call a step), synchronised."""
    import comfy.sample
    import torch

    device = patcher.load_device
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(1, *context, generator=gen).to(device, torch.bfloat16)
    positive = [[cond, {"pooled_output": torch.zeros(1, 768, device=device), "guidance": 3.5}]]
    latent = torch.zeros(1, *latent_shape)
    noise = torch.randn(latent.shape, generator=gen)
    sync(device)
    started = time.perf_counter()
    comfy.sample.sample(
        patcher, noise, steps, 1.0, "euler", "simple", positive, positive, latent, disable_pbar=True, seed=1
    )
    sync(device)
    return time.perf_counter() - started


def per_step(patcher: Any, shape: tuple[int, ...], context: tuple[int, int], steps: int) -> float:
    """Seconds per step: a 1-step warm-up (loads, first-call costs) is not counted."""
    sample(patcher, shape, context, 1)
    return sample(patcher, shape, context, steps) / steps


def image_case(bench: Bench, kind: str, config: dict[str, Any], mode: str, steps: int, **extra: Any) -> Any:
    """s/step and images/min (`steps` steps, diffusion only) of one model at plan.image_px."""
    import comfy.model_management
    import torch

    plan, device = bench.plan, bench.device
    channels, down = (128, 16) if kind == "flux2" else (16, 8)
    shape = (channels, plan.image_px // down, plan.image_px // down)
    context = plan.flux_context if kind == "flux2" else plan.zimage_context
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    patcher = build(kind, config, mode, device)
    values: dict[str, Any] = {}
    if mode == "fp8-fast" and device.type == "cuda":
        values["fp8_matmul"] = bool(comfy.model_management.supports_fp8_compute(device))
    if extra.get("compile"):  # as a worker with DARKROOM_TORCH_COMPILE does it
        from darkroom.ops.speed import apply_speed

        apply_speed(patcher, kind, {"DARKROOM_TORCH_COMPILE": extra["compile"]})
        values["compile_s"] = round(sample(patcher, shape, context, 1), 2)  # first call: compile + 1 step
    s_step = per_step(patcher, shape, context, plan.timed_steps)
    values |= {
        "s_per_step": round(s_step, 4), "steps": steps, "images_per_min": round(60 / (s_step * steps), 3),
        "peak_bytes": peak_bytes(device),
    }  # fmt: skip
    return values


def wan_case(bench: Bench) -> dict[str, Any]:
    """Wan 2.2 A14B s/step for two short clips; t(L) = a*L + b*L^2 over tokens L fitted through both
    (linear layers grow with L, attention with L^2) and evaluated at 81 frames."""
    import torch

    plan, device = bench.plan, bench.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    patcher = build("wan", plan.wan, "bf16", device)
    width, height = plan.wan_px
    points = []
    for frames in plan.wan_frames:
        t = (frames - 1) // 4 + 1
        tokens = t * (height // 16) * (width // 16)
        shape = (16, t, height // 8, width // 8)
        points.append((frames, tokens, per_step(patcher, shape, plan.wan_context, plan.timed_steps)))
    (_, l1, t1), (_, l2, t2) = points
    b = (t2 / l2 - t1 / l1) / (l2 - l1)
    a = t1 / l1 - b * l1
    l81 = ((WAN_FRAMES - 1) // 4 + 1) * (height // 16) * (width // 16)
    fitted = a * l81 + b * l81 * l81
    if a < 0 or b < 0:  # timing noise larger than the growth: say so, and scale the longer clip linearly
        fitted = t2 * l81 / l2
        formula = (
            f"fit unreliable (a={a:.3e}, b={b:.3e}); linear from the longer clip: {t2:.4f} s x {l81}/{l2}"
        )
    else:
        formula = f"s/step(L) = {a:.3e}*L + {b:.3e}*L^2, L = latent frames x {height // 16} x {width // 16}"
    return {
        "clips": [{"frames": f, "tokens": n, "s_per_step": round(s, 4)} for f, n, s in points],
        "formula": formula, "tokens_81": l81, "s_per_step_81_frames": round(fitted, 3),
        "peak_bytes": peak_bytes(device),
    }  # fmt: skip


def load_case(bench: Bench) -> dict[str, Any]:
    """A real-layout Z-Image file (random weights, bf16) written to disk, so it sits in the page cache;
    then darkroom's loader (its detection at the real width) and the move to the device, timed."""
    import comfy.model_management
    import safetensors.torch
    from darkroom.formats.arch import Family
    from darkroom.ops.diffusion import load_diffusion_model

    device = bench.device
    patcher = build("zimage", bench.plan.zimage, "bf16", device)
    tensors = {k: v.cpu().contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}
    del patcher
    release(device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        path = Path(tmp) / "z_image_turbo_bf16.safetensors"
        safetensors.torch.save_file(tensors, str(path))
        del tensors
        path.read_bytes()  # in the page cache for certain
        started = time.perf_counter()
        loaded = load_diffusion_model(path, Family.ZIMAGE)
        comfy.model_management.load_models_gpu([loaded], force_full_load=True)
        sync(device)
        seconds = time.perf_counter() - started
        size = path.stat().st_size
    return {"file_bytes": size, "load_s": round(seconds, 3), "gb_per_s": round(size / seconds / 1e9, 3)}


def run(args: argparse.Namespace) -> Bench:
    started = time.perf_counter()
    import torch

    import_comfy(cpu=args.smoke)
    device = torch.device("cpu" if args.smoke else "cuda")
    plan = smoke_plan() if args.smoke else real_plan()
    bench = Bench(plan, device, args.budget_s)
    print(f"torch {torch.__version__}, ComfyUI imported in {time.perf_counter() - started:.1f} s", flush=True)
    flux_modes = ["bf16", "fp8", "fp8-fast"]
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory < 90e9:
        flux_modes.remove("bf16")  # 64 GB of bf16 weights plus activations do not fit beside the rest
        bench.results.append(Result("flux2-dev bf16", skipped="memory: 64 GB of weights need > 90 GB"))
    for mode in flux_modes:
        run_mode: Callable[[], dict[str, Any]] = partial(
            image_case, bench, "flux2", plan.flux, mode, FLUX_STEPS
        )
        bench.case(f"flux2-dev {mode}", 40, run_mode)
    if not args.no_compile:
        backend = "eager" if args.smoke else "inductor"
        bench.case(
            f"flux2-dev fp8-fast torch.compile ({backend})", 150,
            lambda: image_case(bench, "flux2", plan.flux, "fp8-fast", FLUX_STEPS, compile=backend),
        )  # fmt: skip
    bench.case(
        "z-image-turbo bf16", 20, lambda: image_case(bench, "zimage", plan.zimage, "bf16", ZIMAGE_STEPS)
    )
    bench.case("wan2.2-a14b bf16 (one expert)", 60, lambda: wan_case(bench))
    bench.case("load z-image bf16 page cache -> device", 90, lambda: load_case(bench))
    with darkroom_for(args.darkroom, cpu=args.smoke) as url:
        bench.case(
            "overhead /queue vs POST /prompt",
            30,
            lambda: asyncio.run(overhead_case(url, plan.demo_px, plan.demo_steps, plan.requests)),
        )
    return bench


def summary(bench: Bench) -> dict[str, Any]:
    """The figures by case, plus the overhead as a ratio against the real FLUX.2 image time."""
    found = {r.case: r.values for r in bench.results if not r.skipped}
    out: dict[str, Any] = {"cases": {r.case: r.values or {"skipped": r.skipped} for r in bench.results}}
    overhead = found.get("overhead /queue vs POST /prompt", {}).get("overhead_s")
    flux = next((found[c] for c in ("flux2-dev fp8-fast", "flux2-dev fp8") if c in found), None)
    if overhead is not None and flux:
        image_s = flux["s_per_step"] * FLUX_STEPS
        out["flux2_overhead_ratio"] = round((image_s + overhead) / image_s, 5)
        out["flux2_overhead_formula"] = (
            f"(28 x {flux['s_per_step']} s + {overhead} s) / (28 x {flux['s_per_step']} s)"
        )
    return out


def table(bench: Bench) -> str:
    lines = [f"{'case':44} {'s/step':>9} {'img/min':>9} {'peak GB':>8}  other"]
    for r in bench.results:
        v = r.values
        if r.skipped:
            lines.append(f"{r.case:44} {'-':>9} {'-':>9} {'-':>8}  {r.skipped}")
            continue
        peak = v.get("peak_bytes")
        other = {k: x for k, x in v.items() if k not in ("s_per_step", "images_per_min", "peak_bytes")}
        lines.append(
            f"{r.case:44} {v.get('s_per_step', '-')!s:>9} {v.get('images_per_min', '-')!s:>9} "
            f"{(f'{peak / 1e9:.1f}' if peak else '-'):>8}  {json.dumps(other)}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="the same code at tiny sizes on the CPU")
    parser.add_argument("--darkroom", help="measure this running darkroom (default: start one here)")
    parser.add_argument("--json", default="bench_gpu.json", help="where the figures are written")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip cases that would not fit")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile case")
    parser.add_argument(
        "--cpu-real-size",
        action="store_true",
        help="real endpoints' whole graphs over real-size random-weight files (CPU)",
    )
    args = parser.parse_args()
    if args.cpu_real_size:
        from bench_cpu_real import main as cpu_real_size

        figures = {"cpu_real_size": cpu_real_size(Path(args.json).resolve().parent)}
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
        return
    bench = run(args)
    out = summary(bench)
    out |= {"smoke": args.smoke, "seconds": round(time.perf_counter() - bench.started, 1)}
    print(table(bench))
    if "flux2_overhead_ratio" in out:
        formula, ratio = out["flux2_overhead_formula"], out["flux2_overhead_ratio"]
        print(f"darkroom overhead on a FLUX.2 [dev] image: {formula} = {ratio}")
    Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"wrote {args.json} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
