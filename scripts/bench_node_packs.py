"""Time added to a ComfyUI worker's start by N node packs: starts one CPU worker with 0 packs, then
with N small V1 packs (each a local git repository, locked and installed by darkroom's installer),
``--rounds`` times each, and prints the median start times (spawn to answering /system_stats) and the
difference. ``--packs 0 10 50``: the counts to measure.

    .venv/bin/python scripts/bench_node_packs.py --packs 0 10 50 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from server.engine import install
from server.engine.node_packs import Installer
from server.engine.supervisor import Supervisor
from server.engine.worker import free_port
from server.settings import PROJECT_ROOT, Settings, load_settings

PACK = """class Node:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "bench"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    def run(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {"BenchNode_INDEX": Node}
"""


def build(root: Path, index: int) -> Path:
    folder = root / f"benchpack{index}"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(PACK.replace("INDEX", str(index)))
    git = ["git", "-C", str(folder), "-c", "user.name=b", "-c", "user.email=b@localhost"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "bench"]):
        subprocess.run([*git, *args], check=True)
    return folder


async def start_time_s(settings: Settings, comfyui_dir: Path) -> float:
    supervisor = Supervisor(settings, comfyui_dir)
    started = time.monotonic()
    await supervisor.start()
    elapsed = time.monotonic() - started
    await supervisor.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packs", type=int, nargs="+", default=[0, 10, 50])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    comfyui_dir = install.ensure_comfyui(
        load_settings({}, data_dir=str(PROJECT_ROOT / "data")), install_requirements=False
    )
    medians: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.packs:
            settings = load_settings(
                {}, data_dir=f"{tmp}/data{count}", workers=1, device="cpu", worker_base_port=free_port(),
                worker_start_timeout_s=600.0,
            )  # fmt: skip
            installer = Installer(settings)
            for index in range(count):
                installer.add(str(build(Path(tmp) / f"src{count}", index)))
            times = [asyncio.run(start_time_s(settings, comfyui_dir)) for _ in range(args.rounds)]
            medians[count] = statistics.median(times)
            rounds = ", ".join(f"{t:.2f}" for t in times)
            print(f"{count:4d} packs: start {medians[count]:6.2f} s (rounds: {rounds})", flush=True)
    base = medians.get(0)
    if base is not None:
        for count, median in medians.items():
            if count:
                each_ms = (median - base) / count * 1000
                print(f"{count:4d} packs add {median - base:+.2f} s ({each_ms:+.0f} ms a pack)")


if __name__ == "__main__":
    main()
