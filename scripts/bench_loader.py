"""Benchmark darkroom's quantise-on-load against a plain read of the same file.

Builds a synthetic FLUX.2-shaped bf16 checkpoint (default 2 GB) in a temp dir, then measures, warm
page cache for all: (a) a plain sequential read of the file, (b) bf16 -> scaled-fp8 quantise-on-load
through darkroom.checkpoint (GB/s of source file), (c) peak RSS of that load in a fresh subprocess
against its baseline and against the loaded size; plus, for reference, the same load through
safetensors' memory map. Prints a table and PASS/FAIL against the targets.

    .venv/bin/python scripts/bench_loader.py [--size-gb 2] [--keep] [--dir D] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "custom_nodes"))

from darkroom import arch, checkpoint  # noqa: E402
from darkroom.quant import Fp8Format, quantize_scaled  # noqa: E402

HIDDEN = 3072
LOAD_VS_READ_TARGET = 0.8
RSS_VS_LOADED_TARGET = 1.1
READ_CHUNK_BYTES = 64 << 20
PLAN = checkpoint.LoadPlan(
    checkpoint.WeightDtype.FP8_E4M3FN_SCALED, partial(arch.quantisable, arch.Family.FLUX)
)


def flux2_shapes(size_bytes: int, hidden: int = HIDDEN) -> dict[str, tuple[int, ...]]:
    """FLUX.2 layout (global modulation, 3x SiLU-gated MLP, no biases), blocks added until `size_bytes`."""
    h, mlp = hidden, 3 * hidden
    shapes: dict[str, tuple[int, ...]] = {
        "img_in.weight": (h, 128),
        "txt_in.weight": (h, 15360),
        "time_in.in_layer.weight": (h, 256),
        "time_in.out_layer.weight": (h, h),
        "double_stream_modulation_img.lin.weight": (6 * h, h),
        "double_stream_modulation_txt.lin.weight": (6 * h, h),
        "single_stream_modulation.lin.weight": (3 * h, h),
        "final_layer.linear.weight": (128, h),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
    }
    double = single = 0
    while sum(2 * torch.Size(s).numel() for s in shapes.values()) < size_bytes:
        if double <= single // 2:
            for stream in ("img", "txt"):
                p = f"double_blocks.{double}.{stream}_"
                shapes |= {
                    p + "attn.qkv.weight": (3 * h, h), p + "attn.proj.weight": (h, h),
                    p + "attn.norm.query_norm.scale": (128,), p + "attn.norm.key_norm.scale": (128,),
                    p + "mlp.0.weight": (2 * mlp, h), p + "mlp.2.weight": (h, mlp),
                }  # fmt: skip
            double += 1
        else:
            p = f"single_blocks.{single}."
            shapes |= {
                p + "linear1.weight": (3 * h + 2 * mlp, h), p + "linear2.weight": (h, h + mlp),
                p + "norm.query_norm.scale": (128,), p + "norm.key_norm.scale": (128,),
            }  # fmt: skip
            single += 1
    return shapes


def build_checkpoint(path: Path, size_bytes: int) -> None:
    """Write the synthetic bf16 file (values: one random block tiled, scaled per tensor)."""
    pool = torch.randn(1 << 24, generator=torch.Generator().manual_seed(0)).bfloat16()
    tensors = {}
    for i, (key, shape) in enumerate(flux2_shapes(size_bytes).items()):
        n = torch.Size(shape).numel()
        t = pool.repeat(n // pool.numel() + 1)[:n].reshape(shape)
        tensors[key] = t * (0.01 + 0.001 * (i % 7)) if len(shape) == 2 else t.abs() + 0.5
    checkpoint.save_state_dict(path, tensors)


def read_rate(path: Path) -> float:
    """Plain sequential read into a reused buffer: seconds."""
    buf = bytearray(READ_CHUNK_BYTES)
    view = memoryview(buf)
    started = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - started


def load_ours(path: Path) -> tuple[float, int]:
    """Quantise-on-load through darkroom.checkpoint: (seconds, loaded bytes)."""
    started = time.perf_counter()
    sd = checkpoint.load_state_dict(path, PLAN)
    seconds = time.perf_counter() - started
    return seconds, sum(t.numel() * t.element_size() for t in sd.values())


def load_mmap(path: Path) -> tuple[float, int]:
    """Reference: safetensors safe_open (memory map) tensor by tensor, quantising the same weights."""
    from safetensors import safe_open

    started, out = time.perf_counter(), {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(key)
            if arch.quantisable(arch.Family.FLUX, key, tuple(t.shape)):
                out[key], out[key + "_scale"] = quantize_scaled(t, Fp8Format.E4M3FN)
            else:
                out[key] = t
            del t
    seconds = time.perf_counter() - started
    return seconds, sum(t.numel() * t.element_size() for t in out.values())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(path: Path, how: str) -> None:
    """Subprocess body: baseline RSS after imports, then one load; prints JSON."""
    baseline = _status_kib("VmRSS") * 1024
    seconds, loaded = (load_ours if how == "ours" else load_mmap)(path)
    print(
        json.dumps(
            {"baseline": baseline, "peak": _status_kib("VmHWM") * 1024, "loaded": loaded, "seconds": seconds}
        )
    )


def measure_rss(path: Path, how: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(path),
        "--how",
        how,
        "--threads",
        str(torch.get_num_threads()),
    ]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def run(size_gb: float, repeats: int, keep: bool, parent: Path | None) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="darkroom-bench-", dir=parent))
    path = workdir / "flux2-synthetic-bf16.safetensors"
    try:
        started = time.perf_counter()
        build_checkpoint(path, int(size_gb * 1e9))
        size = path.stat().st_size
        print(
            f"built {path} ({size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s; "
            f"torch threads {torch.get_num_threads()}"
        )
        read_rate(path)  # warm the page cache
        reads, loads = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            reads.append(read_rate(path))
            seconds, loaded = load_ours(path)
            loads.append(seconds)
        read_gbs, load_gbs = size / min(reads) / 1e9, size / min(loads) / 1e9
        ours, mmap = measure_rss(path, "ours"), measure_rss(path, "mmap")
        return report(size, read_gbs, load_gbs, loaded, ours, mmap)
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(
    size: int, read_gbs: float, load_gbs: float, loaded: int, ours: dict[str, Any], mmap: dict[str, Any]
) -> bool:
    ratio = load_gbs / read_gbs
    delta = ours["peak"] - ours["baseline"]
    rss_ratio = delta / ours["loaded"]
    mmap_ratio = (mmap["peak"] - mmap["baseline"]) / mmap["loaded"]
    rows = [
        ("source file (bf16)", f"{size / 1e9:.2f} GB", ""),
        ("loaded (scaled fp8 + rest)", f"{loaded / 1e9:.2f} GB", ""),
        ("(a) plain sequential read", f"{read_gbs:.2f} GB/s", ""),
        (
            "(b) quantise-on-load",
            f"{load_gbs:.2f} GB/s",
            f"{ratio:.2f}x read (target >= {LOAD_VS_READ_TARGET})",
        ),
        (
            "(c) peak RSS delta, ours",
            f"{delta / 1e9:.2f} GB",
            f"{rss_ratio:.2f}x loaded (target <= {RSS_VS_LOADED_TARGET})",
        ),
        ("    baseline RSS (after imports)", f"{ours['baseline'] / 1e9:.2f} GB", ""),
        (
            "    ref: safetensors mmap load",
            f"{(mmap['peak'] - mmap['baseline']) / 1e9:.2f} GB",
            f"{mmap_ratio:.2f}x loaded",
        ),
    ]
    for name, value, note in rows:
        print(f"{name:34s} {value:>12s}  {note}")
    speed_ok, rss_ok = ratio >= LOAD_VS_READ_TARGET, rss_ratio <= RSS_VS_LOADED_TARGET
    print(f"load speed: {'PASS' if speed_ok else 'FAIL'}   peak RSS: {'PASS' if rss_ok else 'FAIL'}")
    return speed_ok and rss_ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=2.0, help="synthetic checkpoint size (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and checkpoint")
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent for the temp dir (default: system temp)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of (a) and (b); best is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--how", choices=["ours", "mmap"], default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.how)
        return
    sys.exit(0 if run(args.size_gb, args.repeats, args.keep, args.dir) else 1)


if __name__ == "__main__":
    main()
