"""Benchmark darkroom's video encode (x264 without its AVX-512 kernels) against x264's own choice.

Encodes the same frames (smooth moving noise, 720p-sized by default) with `asm` as darkroom sets it
and with `asm=auto` (every kernel x264 has, AVX-512 included on CPUs that have it), alternating, and
prints each run, the best time per mode and the ratio. It also prints how many different files each
mode wrote: darkroom's must be 1; `auto` may write several on AVX-512 CPUs (the reason for the limit).

    .venv/bin/python scripts/bench_video_encode.py [--frames 17] [--width 1280] [--height 704] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "custom_nodes"))

from darkroom.formats import media  # noqa: E402


def frames(count: int, height: int, width: int) -> np.ndarray:
    """Coarse noise drifting by a pixel or two a frame: content an encoder has to work on."""
    rng = np.random.default_rng(0)
    base = rng.random((height // 2 + count, width // 2 + count, 3), dtype=np.float32)
    big = base.repeat(2, axis=0).repeat(2, axis=1)
    return np.stack([big[i * 2 : i * 2 + height, i : i + width] for i in range(count)])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    clip = frames(args.frames, args.height, args.width)
    ours = media._this_cpus_x264_instruction_sets()
    modes = {"darkroom": ours, "auto": "auto"}
    times: dict[str, list[float]] = {name: [] for name in modes}
    outputs: dict[str, set[str]] = {name: set() for name in modes}
    print(f"{args.frames} frames {args.width}x{args.height}; darkroom's asm={ours}")
    for run in range(args.repeats):
        for name, asm in modes.items():
            media._this_cpus_x264_instruction_sets = lambda asm=asm: asm
            start = time.perf_counter()
            data = media.encode_video(clip, 16.0)
            times[name].append(time.perf_counter() - start)
            outputs[name].add(hashlib.sha256(data).hexdigest())
            print(f"  run {run + 1} {name:>8}: {times[name][-1]:.3f} s, {len(data)} bytes")
    best = {name: min(values) for name, values in times.items()}
    for name in modes:
        print(f"{name:>8}: best {best[name]:.3f} s, {len(outputs[name])} different file(s)")
    print(f"darkroom / auto: {best['darkroom'] / best['auto']:.2f}x the time")
    print("PASS" if len(outputs["darkroom"]) == 1 else "FAIL: darkroom's encode wrote different files")


if __name__ == "__main__":
    main()
