"""Third-party node packs on a real CPU worker of a fleet's host B: five packs built as local git
repositories (a V1 pack with a web extension and a prestartup script, a V3 pack, one needing a local
wheel, one failing to import, one overriding the V3 pack's node) are added through host A to the
fleet's lock and installed on B from it; B's worker loads them from darkroom's own folder, each gets
its documented state (`darkroom nodes list` shows it), the V1 pack's node is in the editor and a
workflow using it publishes (recording the pack at its commit), runs on B and is offered by B to the
fleet; once the pack is removed through A, B stops offering it, restarts its workers and that endpoint
answers 503 naming the pack."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from server.api.state import PACKS
from server.app import create_app
from server.cli import main
from server.engine.models import load_manifest
from server.engine.node_packs import Installer, lock_digest
from server.engine.supervisor import Supervisor
from server.engine.worker import free_port
from server.settings import Settings
from tests.marked import marked_flux2
from tests.node_pack_builds import V1_NODE, V3_NODE, WHEEL_NODE, build_pack, build_wheel
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

PACKS_BUILT = ("v1pack", "v3pack", "wheelpack", "brokenpack", "overridepack")
NAME = "me/inverted"
REQUEST = {"prompt": "a red cube", "image_size": {"width": 32, "height": 32}, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def pack_settings(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings, postgres_server: PostgresServer
) -> Iterator[Settings]:
    """Host B of a fleet (its database a fresh PostgreSQL one), holding the five packs that host A added
    to the fleet's lock (pip sees only the local wheel's folder); B installs them from the fleet's lock
    as it joins, before its worker starts (`darkroom nodes sync`; a running host converges by itself:
    tests/unit/server/queue/test_fleet_packs.py)."""
    root = tmp_path_factory.mktemp("node-packs")
    url = postgres_server.database()
    settings = replace(
        stack_settings, data_dir=str(root / "data"), worker_base_port=free_port(), database_url=url
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PIP_NO_INDEX", "1")
        env.setenv("PIP_FIND_LINKS", str(build_wheel(root / "wheels").parent))
        env.setenv("DARKROOM_DATABASE_URL", url)
        for name in PACKS_BUILT:
            assert (
                main(["nodes", "--data-dir", str(root / "a"), "add", str(build_pack(root / "src", name))])
                == 0
            )
        assert not (root / "data" / "node_packs.yaml").exists()
        assert main(["nodes", "--data-dir", settings.data_dir, "sync"]) == 0
        yield settings


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(pack_settings: Settings, comfyui_dir: Path) -> AsyncIterator[TestClient[Any, Any]]:
    supervisor = Supervisor(pack_settings, comfyui_dir)
    await supervisor.start()
    try:
        app = create_app(pack_settings, supervisor, run_supervisor=False)
        async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
            yield test_client
    finally:
        await supervisor.stop()


async def verified(client: TestClient[Any, Any], *, timeout_s: float = 240.0) -> dict[str, Any]:
    """The packs' states once the server has verified the lock as it is now."""
    watch = client.app[PACKS]
    installer = Installer(watch.settings)

    async with asyncio.timeout(timeout_s):
        while watch.report.digest != lock_digest(installer.locked()) or any(
            p.state == "pending" for p in watch.report.packs.values()
        ):
            await asyncio.sleep(0.5)
    return {name: (p.state, p.problems, p.nodes) for name, p in watch.report.packs.items()}


def host_a(host_b: Settings) -> str:
    """Host A's data dir (the fixture's), beside B's."""
    return str(Path(host_b.data_dir).parent / "a")


async def cli(data_dir: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``darkroom nodes --data-dir DATA_DIR ARGS`` (a fleet host's: it opens the fleet's database)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["nodes", "--data-dir", data_dir, *args])
    return code, capsys.readouterr().out


async def advertised(client: TestClient[Any, Any]) -> list[str]:
    """The apps host B offers the fleet, as its last heartbeat left them in the fleet's database."""
    hosts = (await (await client.get("/hosts")).json())["hosts"]
    (this,) = [h for h in hosts if h["this_host"]]
    return list(this["apps"])


def inverted_prompt() -> dict[str, Any]:
    prompt = marked_flux2(load_manifest())
    prompt["40"] = {"class_type": V1_NODE, "inputs": {"image": prompt["13"]["inputs"]["images"]}}
    prompt["13"]["inputs"]["images"] = ["40", 0]
    return prompt


async def test_packs_load_verify_publish_run_and_a_removed_pack_is_a_503(
    client: TestClient[Any, Any], pack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    states = await verified(client)
    assert states["v1pack"] == ("ok", (), (V1_NODE,))
    assert states["wheelpack"] == ("ok", (), (WHEEL_NODE,))
    # ComfyUI loads the folder in directory order: whichever of the two comes last wins the node id.
    clash = {states[name][:2] for name in ("v3pack", "overridepack")}
    assert clash in (
        {("failed", (f"its node {V3_NODE} is overridden by node pack {a}",)),
         ("failed", (f"it overrides node {V3_NODE} of node pack {b}",))}
        for a, b in (("overridepack", "v3pack"), ("v3pack", "overridepack"))
    ), clash  # fmt: skip
    assert states["brokenpack"][0] == "failed" and "IMPORT FAILED" in states["brokenpack"][1][0]
    code, listed = await cli(pack_settings.data_dir, "list", capsys=capsys)
    assert code == 1, "a failed pack makes `nodes list` fail"
    lines = {line.split()[0]: line for line in listed.splitlines()}
    assert (
        " ok " in lines["v1pack"]
        and " failed " in lines["brokenpack"]
        and "IMPORT FAILED" in lines["brokenpack"]
    )
    dashboard = await (await client.get("/dashboard/state")).json()
    shown = {p["name"]: p for p in dashboard["node_packs"]}
    assert shown["brokenpack"]["state"] == "failed" and shown["v1pack"]["nodes"] == [V1_NODE]

    # The editor (ComfyUI's frontend through darkroom) has the packs' nodes and web extensions; the
    # V1 pack's prestartup script ran before its nodes were imported; the wheel's package was imported.
    info = await (await client.get(f"/editor/api/object_info/{V1_NODE}")).json()
    assert info[V1_NODE]["description"] == "prestartup ran: yes"
    wheel_info = await (await client.get(f"/editor/api/object_info/{WHEEL_NODE}")).json()
    assert wheel_info[WHEEL_NODE]["description"] == "value 42"
    extensions = await (await client.get("/editor/api/extensions")).json()
    assert "/extensions/v1pack/v1pack.js" in extensions
    script = await client.get("/editor/extensions/v1pack/v1pack.js")
    assert script.status == 200 and "darkroom test pack" in await script.text()

    commit = Installer(pack_settings).locked()["v1pack"].commit
    published = await client.post("/workflows", json={"name": NAME, "prompt": inverted_prompt()})
    assert published.status == 201, await published.text()
    assert (await published.json())["node_packs"] == {"v1pack": commit}
    shown = await (await client.get(f"/workflows/{NAME}")).json()
    assert shown["versions"][0]["node_packs"] == {"v1pack": commit}
    run = await client.post(f"/run/{NAME}", json=REQUEST)  # B runs it (the fleet's only host)
    assert run.status == 200, await run.text()
    assert NAME in await advertised(client), "B offers the workflow: its pack is verified there"
    (image,) = (await run.json())["images"]
    served = await client.get("/" + image["url"].split("/", 3)[3])
    assert Image.open(io.BytesIO(await served.read())).size == (32, 32)

    # A node of a failed pack, and one of a pack not installed (named by the editor's workflow).
    overridden = inverted_prompt()
    overridden["41"] = {"class_type": V3_NODE, "inputs": {"value": 1.0}}
    missing = inverted_prompt()
    missing["42"] = {"class_type": "GoneNode", "inputs": {}}
    workflow = {
        "nodes": [{"type": "GoneNode", "properties": {"aux_id": "someone/gone-pack", "ver": "abc123"}}]
    }
    for prompt, wanted in (
        (overridden, f"'{V3_NODE}' is from node pack "),
        (missing, "node pack someone/gone-pack, which is not installed: the host's operator installs it "
                  "with `darkroom nodes add https://github.com/someone/gone-pack@abc123`"),
    ):  # fmt: skip
        for route, body in (
            ("/workflows", {"name": "me/refused", "prompt": prompt, "workflow": workflow}),
            ("/workflows/check", {"prompt": prompt, "workflow": workflow}),  # the editor's dialog
        ):
            refused = await client.post(route, json=body)
            answer = await refused.json()
            assert refused.status == 422 and any(wanted in e["msg"] for e in answer["detail"]), (
                route,
                answer,
            )

    # Removed through host A: B follows the fleet's lock, and the workflow needing it answers 503 naming
    # it at once (before B's workers have restarted without it), B no longer offers it to the fleet, and
    # B restarts its worker to unload it.
    worker = client.app[PACKS].supervisor.workers[0]
    restarts = worker.restarts
    assert await cli(host_a(pack_settings), "remove", "v1pack", capsys=capsys) == (0, "removed v1pack\n")
    async with asyncio.timeout(30):
        while "v1pack" in client.app[PACKS].report.packs:
            await asyncio.sleep(0.2)
    gone = await client.post(f"/run/{NAME}", json=REQUEST)
    body = await gone.json()
    assert gone.status == 503 and body["error_type"] == "node_packs_missing", body
    assert "node pack v1pack is not installed" in body["detail"] and commit in body["detail"]
    async with asyncio.timeout(10):
        while NAME in await advertised(client):
            await asyncio.sleep(0.2)
    assert "darkroom/demo-flux-2" in await advertised(client)
    async with asyncio.timeout(30):
        while worker.restarts == restarts:
            await asyncio.sleep(0.2)
