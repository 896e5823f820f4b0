"""Benchmark darkroom's quantise-on-load against a plain read of the same file, cold and warm.

Builds a synthetic FLUX.2-shaped bf16 checkpoint (default 2 GB) in a temp dir, then, for each page-cache
mode asked for (cold: the file evicted from the page cache before every timed run, as a server loading
from disk sees it; warm: the file cached), measures (a) a plain sequential read of the file, (b) bf16 ->
scaled-fp8 quantise-on-load through darkroom.checkpoint (GB/s of source file), (c) peak RSS of that load
in a fresh subprocess against its baseline and against the loaded size. Reads and loads alternate, each
mode's best run counts, and every run is printed for the spread. Also, for reference, the peak RSS of
the same load through safetensors' memory map (warm). Prints PASS/FAIL per mode against the targets.

Cold runs evict just this file (posix_fadvise DONTNEED; no root needed), or failing that drop all
caches (root), and check with mincore that the file left the page cache before each timed run. If
neither works here, cold is reported unavailable and only warm is measured.

    .venv/bin/python scripts/bench_loader.py [--size-gb 2] [--cache both] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "custom_nodes"))

from darkroom.formats import arch, checkpoint  # noqa: E402
from darkroom.formats.quant import Fp8Format, quantize_scaled  # noqa: E402

HIDDEN = 3072
LOAD_VS_READ_TARGET = 0.8
RSS_VS_LOADED_TARGET = 1.1
READ_CHUNK_BYTES = 64 << 20
COLD_CACHED_LIMIT = 0.01  # share of the file that may still be cached when a cold run starts
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


def read_seconds(path: Path) -> float:
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


def cached_fraction(path: Path) -> float:
    """Share of the file's pages in the page cache: mincore on a fresh map, which reads no data."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    if size == 0:
        return 0.0
    vec = np.zeros(pages, dtype=np.uint8)
    libc = ctypes.CDLL(None, use_errno=True)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        rc = libc.mincore(
            ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), ctypes.c_void_p(vec.ctypes.data)
        )
        del view  # the map cannot close while a buffer views it
    if rc != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return float(np.count_nonzero(vec & 1)) / pages


def fadvise_evict(path: Path) -> None:
    """Evict just this file (no root needed). Dirty pages are skipped, so write them back first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_all_caches(path: Path) -> None:
    """Evict every clean cached page on the machine (root only; other users' files too)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


EVICTIONS: list[tuple[str, Callable[[Path], None]]] = [
    ("posix_fadvise(POSIX_FADV_DONTNEED) on the file", fadvise_evict),
    ("sync; echo 3 > /proc/sys/vm/drop_caches", drop_all_caches),
]


class ColdCache:
    """Empties the page cache of the file before each cold run, and proves it did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = ""
        self._evict: Callable[[Path], None] | None = None

    def choose(self) -> str | None:
        """Pick the first eviction that works here: None, or why no cold run is possible."""
        problems = []
        for name, evict in EVICTIONS:
            try:
                evict(self.path)
                left = cached_fraction(self.path)
            except (OSError, AttributeError) as e:  # EPERM/EACCES, or no fadvise on this platform
                problems.append(f"{name}: {e}")
                continue
            if left <= COLD_CACHED_LIMIT:
                self.name, self._evict = name, evict
                return None
            problems.append(f"{name}: {left:.0%} of the file still cached")
        return "; ".join(problems)

    def __call__(self) -> None:
        if self._evict is None:
            raise RuntimeError("no working eviction: call choose() first")
        self._evict(self.path)
        left = cached_fraction(self.path)
        if left > COLD_CACHED_LIMIT:  # never time a warm run as a cold one
            raise RuntimeError(f"{left:.0%} of {self.path} still cached after {self.name}")


@dataclass
class ModeResult:
    mode: str
    reads: list[float]  # seconds per timed run
    loads: list[float]
    loaded: int
    rss: dict[str, Any]


def measure_mode(path: Path, mode: str, repeats: int, cold: ColdCache) -> ModeResult:
    """Timed reads and loads, alternating which goes first (disk and machine load drift), then RSS."""

    def prepare() -> None:
        if mode == "cold":
            cold()
        else:
            read_seconds(path)  # every page cached, whatever ran before

    reads: list[float] = []
    loads: list[float] = []
    loaded = 0
    for i in range(repeats):
        for what in ("read", "load") if i % 2 == 0 else ("load", "read"):
            prepare()
            if what == "read":
                reads.append(read_seconds(path))
            else:
                seconds, loaded = load_ours(path)
                loads.append(seconds)
    prepare()
    return ModeResult(mode, reads, loads, loaded, measure_rss(path, "ours"))


def report(size: int, result: ModeResult) -> bool:
    def rates(runs: list[float]) -> tuple[float, str]:
        gbs = [size / s / 1e9 for s in runs]
        return max(gbs), " ".join(f"{g:.2f}" for g in gbs)

    (read_gbs, read_runs), (load_gbs, load_runs) = rates(result.reads), rates(result.loads)
    ratio = load_gbs / read_gbs
    pairs = " ".join(f"{read / load:.2f}x" for read, load in zip(result.reads, result.loads, strict=True))
    rss = result.rss
    delta = rss["peak"] - rss["baseline"]
    rss_ratio = delta / rss["loaded"]
    rows = [
        ("(a) plain sequential read", f"{read_gbs:.2f} GB/s", f"best of {read_runs}"),
        ("(b) quantise-on-load", f"{load_gbs:.2f} GB/s", f"best of {load_runs}"),
        ("    load / read", f"{ratio:.2f}x", f"target >= {LOAD_VS_READ_TARGET}"),
        ("    same, per adjacent pair", "", pairs),
        ("(c) peak RSS delta, ours", f"{delta / 1e9:.2f} GB", f"baseline {rss['baseline'] / 1e9:.2f} GB"),
        ("    RSS delta / loaded", f"{rss_ratio:.2f}x", f"target <= {RSS_VS_LOADED_TARGET}"),
    ]
    print(f"-- {result.mode} page cache")
    for name, value, note in rows:
        print(f"{name:34s} {value:>12s}  {note}")
    speed_ok, rss_ok = ratio >= LOAD_VS_READ_TARGET, rss_ratio <= RSS_VS_LOADED_TARGET
    print(
        f"{result.mode}: load speed {'PASS' if speed_ok else 'FAIL'}   "
        f"peak RSS {'PASS' if rss_ok else 'FAIL'}"
    )
    return speed_ok and rss_ok


def modes_to_run(cache: str, cold: ColdCache) -> list[str]:
    modes = ["cold", "warm"] if cache == "both" else [cache]
    if "cold" in modes:
        problem = cold.choose()
        if problem is not None:
            print(f"cold page cache unavailable here ({problem}); measuring warm only")
            return ["warm"]
        print(f"cold runs first evict the file with: {cold.name}")
    return modes


def run(args: argparse.Namespace) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="darkroom-bench-", dir=args.dir))
    path = args.file or workdir / "flux2-synthetic-bf16.safetensors"
    try:
        started = time.perf_counter()
        if args.file is None:
            build_checkpoint(path, int(args.size_gb * 1e9))
        size = path.stat().st_size
        print(
            f"{'built' if args.file is None else 'using'} {path} ({size / 1e9:.2f} GB) in "
            f"{time.perf_counter() - started:.1f} s; torch threads {torch.get_num_threads()}"
        )
        cold = ColdCache(path)
        results = [measure_mode(path, mode, args.repeats, cold) for mode in modes_to_run(args.cache, cold)]
        loaded = results[0].loaded
        print(f"source file (bf16) {size / 1e9:.2f} GB, loaded (scaled fp8 + rest) {loaded / 1e9:.2f} GB")
        passed = [report(size, result) for result in results]
        read_seconds(path)
        ref = measure_rss(path, "mmap")
        ref_ratio = (ref["peak"] - ref["baseline"]) / ref["loaded"]
        print(f"reference: safetensors mmap load (warm), peak RSS delta {ref_ratio:.2f}x loaded")
        return all(passed)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=2.0, help="synthetic checkpoint size (default 2)")
    parser.add_argument(
        "--cache", choices=["cold", "warm", "both"], default="both", help="page-cache modes (default both)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and checkpoint")
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent for the temp dir (default: system temp)"
    )
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="use this bf16 checkpoint (from --keep) instead of building one",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of (a) and (b) per mode; best is reported"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--how", choices=["ours", "mmap"], default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.how)
        return
    sys.exit(0 if run(args) else 1)


if __name__ == "__main__":
    main()
