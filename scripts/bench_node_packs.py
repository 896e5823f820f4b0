"""Time added to a ComfyUI worker's start by N node packs, robust to a noisy machine: builds a data dir
per pack count (N small V1 packs, each a local git repository, locked and installed by darkroom's
installer), then runs ``--rounds`` rounds, each starting one CPU worker per count in an order rotated
every round (spawn to answering /system_stats), so the counts see the same load drift. Prints each
count's median start and its spread (min..max, and the interquartile range), and for each N the
difference from 0 packs paired within a round: its median and spread, and per pack.

    .venv/bin/python scripts/bench_node_packs.py --packs 0 10 50 --rounds 5
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


def spread(values: list[float], sign: str = "") -> str:
    """median, min..max and the interquartile range of ``values`` (seconds; ``sign="+"``: differences)."""
    low, high = min(values), max(values)
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (low, low, low)
    median = statistics.median(values)
    return f"{median:{sign}.2f} s (min..max {low:{sign}.2f}..{high:{sign}.2f}, IQR {q3 - q1:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packs", type=int, nargs="+", default=[0, 10, 50])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    counts = sorted(set(args.packs) | {0})
    comfyui_dir = install.ensure_comfyui(
        load_settings({}, data_dir=str(PROJECT_ROOT / "data")), install_requirements=False
    )
    times: dict[int, list[float]] = {count: [] for count in counts}
    with tempfile.TemporaryDirectory() as tmp:
        settings: dict[int, Settings] = {}
        for count in counts:
            settings[count] = load_settings(
                {}, data_dir=f"{tmp}/data{count}", workers=1, device="cpu", worker_base_port=free_port(),
                worker_start_timeout_s=600.0,
            )  # fmt: skip
            installer = Installer(settings[count])
            for index in range(count):
                installer.add(str(build(Path(tmp) / f"src{count}", index)))
        for round_ in range(args.rounds):
            order = counts[round_ % len(counts) :] + counts[: round_ % len(counts)]
            for count in order:
                times[count].append(asyncio.run(start_time_s(settings[count], comfyui_dir)))
            shown = ", ".join(f"{c} packs {times[c][-1]:.2f} s" for c in order)
            print(f"round {round_ + 1}: {shown}", flush=True)
    for count in counts:
        print(f"{count:4d} packs: start {spread(times[count])}")
    for count in counts[1:]:
        added = [n - z for n, z in zip(times[count], times[0], strict=True)]  # paired within a round
        each_ms = statistics.median(added) / count * 1000
        print(f"{count:4d} packs add {spread(added, '+')}; {each_ms:+.0f} ms a pack (median)")


if __name__ == "__main__":
    main()
