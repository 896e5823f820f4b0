"""Drill: a node pack added while the host serves restarts its two CPU workers one at a time, and the
host keeps serving. The real stack in-process (two ComfyUI workers on the tiny demo models, the facade
with its node-pack watch); a V1 pack (a local git repository) is locked while a client sends
``/run/darkroom/demo-flux-2`` requests back to back. Checks: every request answers 200, at least one
ran during the roll, never fewer than one worker ready, each worker restarted exactly once, both ready
again at the end, and the pack verified ``ok`` in the workers. Prints the figures as JSON; exit 1 on a
failed check. Too slow for make test (two worker starts, then two restarts).

    .venv/bin/python scripts/drill_rolling_restart.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.api.state import PACKS  # noqa: E402
from server.app import create_app  # noqa: E402
from server.engine import install  # noqa: E402
from server.engine.node_packs import Installer, lock_digest  # noqa: E402
from server.engine.supervisor import Supervisor  # noqa: E402
from server.engine.worker import free_port  # noqa: E402
from server.settings import PROJECT_ROOT, load_settings  # noqa: E402
from tests.node_pack_builds import V1_NODE, build_pack  # noqa: E402

DEMO = "/run/darkroom/demo-flux-2"
REQUEST = {"prompt": "a red cube", "image_size": {"width": 32, "height": 32}, "num_inference_steps": 1}
TIMEOUT_S = 600.0


async def drill(tmp: Path) -> dict[str, Any]:
    settings = load_settings(
        {}, data_dir=str(tmp / "data"), models_dir=str(PROJECT_ROOT / "data" / "models"), workers=2,
        device="cpu", worker_base_port=free_port(), worker_start_timeout_s=300.0,
    )  # fmt: skip
    comfyui_dir = install.ensure_comfyui(
        load_settings({}, data_dir=str(PROJECT_ROOT / "data")), install_requirements=False
    )
    supervisor = Supervisor(settings, comfyui_dir)
    await supervisor.start()
    try:
        app = create_app(settings, supervisor, run_supervisor=False)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await roll(client, supervisor, Installer(settings), build_pack(tmp / "src", "v1pack"))
    finally:
        await supervisor.stop()


async def roll(
    client: TestClient[Any, Any], supervisor: Supervisor, installer: Installer, pack: Path
) -> dict[str, Any]:
    watch = client.app[PACKS]
    async with asyncio.timeout(TIMEOUT_S):
        while not watch.report.digest:  # the empty lock verified: the watch follows the lock from now on
            await asyncio.sleep(0.2)
    restarts = [w.restarts for w in supervisor.workers]
    ready_seen: list[int] = []
    statuses: list[tuple[float, int]] = []  # (end time, status)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            ready_seen.append(sum(1 for w in supervisor.workers if w.ready))
            await asyncio.sleep(0.05)

    async def requests() -> None:
        while not done.is_set():
            response = await client.post(DEMO, json=REQUEST)
            await response.read()
            statuses.append((time.monotonic(), response.status))

    tasks = [asyncio.create_task(sample()), asyncio.create_task(requests())]
    await asyncio.sleep(1.0)  # a request or two before the roll
    locked_at = time.monotonic()
    await asyncio.to_thread(installer.add, str(pack))
    digest = lock_digest(installer.locked())
    async with asyncio.timeout(TIMEOUT_S):
        while watch.report.digest != digest or any(p.state == "pending" for p in watch.report.packs.values()):
            await asyncio.sleep(0.2)
    verified_at = time.monotonic()
    await asyncio.sleep(1.0)  # a request or two after it
    done.set()
    await asyncio.gather(*tasks)
    state = watch.report.packs["v1pack"]
    during = [s for t, s in statuses if locked_at <= t <= verified_at]
    min_ready = min(ready_seen)
    figures = {
        "roll_s": round(verified_at - locked_at, 1),
        "requests": len(statuses),
        "requests_during_roll": len(during),
        "statuses": sorted({s for _, s in statuses}),
        "min_ready_workers": min_ready,
        "restarts": [w.restarts - r for w, r in zip(supervisor.workers, restarts, strict=True)],
        "ready_at_end": [w.ready for w in supervisor.workers],
        "pack": [state.state, list(state.nodes)],
    }
    checks = {
        "every request answered 200": figures["statuses"] == [200],
        "a request ran during the roll": len(during) >= 1,
        "one worker ready at least, always": min_ready >= 1,
        "each worker restarted once": figures["restarts"] == [1, 1],
        "both workers ready at the end": figures["ready_at_end"] == [True, True],
        "the pack verified ok": figures["pack"] == ["ok", [V1_NODE]],
    }
    figures["failed"] = [name for name, ok in checks.items() if not ok]
    return figures


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="drill-rolling-") as tmp:
        figures = asyncio.run(drill(Path(tmp)))
    print(json.dumps(figures, indent=1))
    return 1 if figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
