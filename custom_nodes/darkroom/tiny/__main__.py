"""`python -m darkroom.tiny --models-dir D`: build every tiny random-weight model (ComfyUI on sys.path)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def _use_cpu_without_gpu() -> None:
    # ComfyUI initialises CUDA on import unless told to use the CPU; these builds need no GPU.
    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = not torch.cuda.is_available()


def main() -> None:
    _use_cpu_without_gpu()
    from . import diffusion, encoders, hunyuan_video, ltxav, safety, upscalers

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    written = [
        *diffusion.build(args.models_dir),
        *encoders.build(args.models_dir),
        *hunyuan_video.build(args.models_dir),
        *upscalers.build(args.models_dir),
        *safety.build(args.models_dir),
        *ltxav.build(args.models_dir),
    ]
    took_s = time.perf_counter() - started
    logging.info("tiny models: %d files in %s (%.1f s)", len(written), args.models_dir, took_s)


if __name__ == "__main__":
    main()
