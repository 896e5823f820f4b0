"""Publishing a marked workflow on the real stack: checked against the worker's own nodes and model
files, served at once on the sync and queue routes, versioned, pinned, kept across a restart."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image
from queue_stack import Client, facade, png, submit, wait_status

from server.engine.models import load_manifest
from server.engine.supervisor import Supervisor
from server.settings import PROJECT_ROOT, Settings
from tests.marked import marked_flux2, set_input

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

MANIFEST = load_manifest()
NAME = "me/lighthouse"
REQUEST = {"prompt": "a red cube", "image_size": {"width": 80, "height": 48}, "seed": 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("publish-e2e")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(stack_settings: Settings, supervisor: Supervisor, data_dir: Path) -> AsyncIterator[Client]:
    async with facade(stack_settings, supervisor, data_dir) as test_client:
        yield test_client


async def publish(client: Client, prompt: dict[str, Any], name: str = NAME) -> tuple[int, Any]:
    response = await client.post(
        "/workflows", json={"name": name, "prompt": prompt, "workflow": {"nodes": []}}
    )
    return response.status, await response.json()


async def image_bytes(client: Client, result: dict[str, Any]) -> bytes:
    (image,) = result["images"]
    served = await client.get("/" + image["url"].split("/", 3)[3])
    assert served.status == 200
    return await served.read()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p.update({"30": {"class_type": "NoSuchNode", "inputs": {}}}),
            "unknown node type 'NoSuchNode'",
        ),
        (
            lambda p: p["3"]["inputs"].update(vae_name=MANIFEST.get("flux2-vae").folder_name),
            "fetch it with `darkroom models fetch flux2-vae",
        ),
        (lambda p: p["22"]["inputs"].update(field="prompt"), "already set by node 20"),
        (lambda p: p["22"]["inputs"].update(field="sync_mode"), "is reserved"),
        (lambda p: p.pop("13"), "no output node"),
    ],
)
async def test_each_mistake_is_a_422_before_anything_is_served(
    client: Client, change: Any, message: str
) -> None:
    prompt = marked_flux2(MANIFEST)
    change(prompt)
    status, body = await publish(client, prompt, "me/broken")
    assert status == 422, body
    assert any(message in entry["msg"] for entry in body["detail"]), body
    assert (await client.post("/run/me/broken", json=REQUEST)).status == 404


async def test_check_lists_the_fields_publishing_would_serve_and_publishes_nothing(client: Client) -> None:
    """The editor's Publish dialog: the server's reading of the input nodes, before publishing."""
    before = (await (await client.get("/workflows")).json())["workflows"]
    checked = await client.post("/workflows/check", json={"prompt": marked_flux2(MANIFEST)})
    assert checked.status == 200, await checked.text()
    body = await checked.json()
    fields = {f["name"]: f for f in body["fields"]}
    assert body["output"] == "images" and "sync_mode" not in fields
    assert fields["prompt"]["required"] and fields["prompt"]["default"] is None
    assert fields["prompt"]["min_length"] == 1 and fields["prompt"]["max_length"] == 500
    steps = fields["num_inference_steps"]
    assert (steps["default"], steps["ge"], steps["le"], steps["required"]) == (2, 1, 8, False)
    assert fields["image_size"]["default"] == {"width": 64, "height": 48}
    assert (fields["image_size"]["ge"], fields["image_size"]["le"]) == (16, 256)
    listed = await (await client.get("/workflows")).json()
    assert listed["workflows"] == before, "checking publishes nothing"
    assert listed["name_pattern"].startswith("^(?!(?:comfy|workflows)/)")
    assert listed["reserved_owners"] == ["comfy", "workflows"]

    broken = marked_flux2(MANIFEST)
    broken.pop("13")
    refused = await client.post("/workflows/check", json={"prompt": broken})
    assert refused.status == 422 and "no output node" in (await refused.json())["detail"][0]["msg"]


async def test_a_name_taken_by_a_builtin_endpoint_is_refused(client: Client) -> None:
    status, body = await publish(client, marked_flux2(MANIFEST), "darkroom/demo-flux-2")
    assert status == 422 and "collides with the built-in endpoint" in body["detail"][0]["msg"]


async def test_publish_serve_version_pin_restart_unpublish(
    client: Client, stack_settings: Settings, supervisor: Supervisor, data_dir: Path
) -> None:
    prompt = marked_flux2(MANIFEST)
    status, v1 = await publish(client, prompt)
    assert status == 201, v1
    assert (v1["version"], v1["app_id"]) == (1, f"{NAME}@1")
    assert v1["urls"]["run"].endswith(f"/run/{NAME}") and v1["pinned_urls"]["queue"].endswith(
        f"/queue/{NAME}@1"
    )

    run = await client.post(f"/run/{NAME}", json=REQUEST)
    assert run.status == 200, await run.text()
    first = await run.json()
    assert first["seed"] == 3 and first["images"][0]["width"] == 80 and first["images"][0]["height"] == 48
    first_bytes = await image_bytes(client, first)
    assert Image.open(io.BytesIO(first_bytes)).size == (80, 48)

    bad = await client.post(f"/run/{NAME}", json={"prompt": "x", "num_inference_steps": 99})
    assert bad.status == 422 and (await bad.json())["detail"][0]["loc"] == ["body", "num_inference_steps"]

    status, v2 = await publish(client, set_input(prompt, "24", "value", 7.5))  # another guidance default
    assert status == 201 and v2["version"] == 2
    latest = await (await client.post(f"/run/{NAME}", json=REQUEST)).json()
    pinned = await (await client.post(f"/run/{NAME}@1", json=REQUEST)).json()
    assert await image_bytes(client, latest) != first_bytes, "version 2 changes the output"
    assert await image_bytes(client, pinned) == first_bytes, "@1 still gives the first version's output"

    request_id = await submit(client, f"{NAME}@1", body=REQUEST)
    assert "error" not in await wait_status(client, request_id)
    result = await (await client.get(f"/queue/{NAME}@1/requests/{request_id}")).json()
    assert await image_bytes(client, result) == first_bytes

    async with client.ws_connect("/ws") as ws:  # the WebSocket's submit serves it too
        await ws.send_json({"action": "submit", "app_id": f"{NAME}@1", "input": REQUEST})
        async with asyncio.timeout(60):
            while (event := await ws.receive_json())["type"] != "completed":
                assert event["type"] not in ("failed", "error"), event
    assert await image_bytes(client, event["result"]) == first_bytes

    listed = await (await client.get("/workflows")).json()
    assert [(w["name"], w["version"], w["versions"]) for w in listed["workflows"]] == [(NAME, 2, 2)]
    shown = await (await client.get(f"/workflows/{NAME}/versions/1")).json()
    assert shown["prompt"] == prompt and shown["workflow"] == {"nodes": []}
    # The editor opens the latest version, or the one pinned (the endpoint list's version picker).
    for app_id, version in ((NAME, 2), (f"{NAME}@1", 1)):
        opened = await (await client.get(f"/endpoints/{app_id}/workflow")).json()
        assert (opened["name"], opened["published"], opened["version"]) == (NAME, True, version)
        assert opened["prompt"]["24"]["inputs"]["value"] == (7.5 if version == 2 else 2.5)
    assert (await client.get(f"/endpoints/{NAME}@3/workflow")).status == 404
    document = await (await client.get("/openapi.json")).json()
    assert f"/run/{NAME}" in document["paths"] and f"/run/{NAME}@1" in document["paths"]

    async with facade(stack_settings, supervisor, data_dir) as restarted:
        again = await restarted.post(f"/run/{NAME}@1", json=REQUEST)
        assert again.status == 200 and await image_bytes(restarted, await again.json()) == first_bytes

    removed = await client.delete(f"/workflows/{NAME}")
    assert removed.status == 200 and (await removed.json())["unpublished_versions"] == [1, 2]
    assert (await client.post(f"/run/{NAME}", json=REQUEST)).status == 404
    assert (await client.get(f"/workflows/{NAME}")).status == 404


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "workflows", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=PROJECT_ROOT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, output.decode()


async def test_the_cli_publishes_and_lists(client: Client, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{client.server.port}"
    export = tmp_path / "api.json"
    export.write_text(json.dumps(marked_flux2(MANIFEST)))  # as the editor's "Export (API)" writes it
    code, output = await run_cli("publish", str(export), "--name", "me/from-cli", "--url", url)
    assert code == 0, output
    assert "published me/from-cli@1" in output and f"{url}/run/me/from-cli" in output
    code, output = await run_cli("list", "--url", url)
    assert code == 0 and "me/from-cli  version 1 of 1" in output, output
    run = await client.post("/run/me/from-cli", json=REQUEST)
    assert run.status == 200 and (await run.json())["images"][0]["width"] == 80

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(set_input(marked_flux2(MANIFEST), "22", "field", "prompt")))
    code, output = await run_cli("--url", url, "publish", str(broken), "--name", "me/broken-cli")
    assert code == 1 and "already set by node 20" in output, output
    assert (await client.delete("/workflows/me/from-cli")).status == 200


DEMOS = [
    ("darkroom/demo-flux-2", {}),
    ("darkroom/demo-flux-dev", {}),
    ("darkroom/demo-flux-schnell", {}),
    ("darkroom/demo-wan-2.2-5b-t2v", {}),
    # Square images: an "auto" aspect ratio (a lookup key) stays as it resolved when the workflow was opened.
    ("darkroom/demo-wan-2.2-5b-i2v", {"image_url": png(64, 64, 1)}),
    ("darkroom/demo-wan-2.2-a14b-t2v", {}),
    ("darkroom/demo-wan-2.2-a14b-i2v", {"image_url": png(64, 64, 2)}),
]


async def outputs(client: Client, app_id: str, body: dict[str, Any]) -> bytes:
    response = await client.post(f"/run/{app_id}", json={"prompt": "a red fox", "seed": 3, **body})
    assert response.status == 200, await response.text()
    result = await response.json()
    file = result["images"][0] if "images" in result else result["video"]
    download = await client.get("/" + file["url"].split("/", 3)[3])
    assert download.status == 200
    return await download.read()


@pytest.mark.parametrize(("app_id", "body"), DEMOS, ids=[app_id for app_id, _ in DEMOS])
async def test_a_builtin_endpoint_opened_as_a_workflow_and_republished_gives_the_same_bytes(
    client: Client, app_id: str, body: dict[str, Any]
) -> None:
    opened = await client.get(f"/endpoints/{app_id}/workflow")
    assert opened.status == 200, await opened.text()
    prompt = (await opened.json())["prompt"]
    marked = {n["inputs"]["field"] for n in prompt.values() if n["class_type"].startswith("DarkroomInput")}
    assert {"prompt", "seed"} <= marked and (("image_url" in marked) == ("image_url" in body)), marked
    copy = "me/copy-of-" + app_id.split("/")[1].replace(".", "-")
    status, published = await publish(client, prompt, copy)
    assert status == 201, published
    assert await outputs(client, copy, body) == await outputs(client, app_id, body)
    assert (await client.delete(f"/workflows/{copy}")).status == 200


async def test_only_real_endpoints_open(client: Client) -> None:
    for app_id in ("darkroom/no-such-app", "darkroom/editor"):
        response = await client.get(f"/endpoints/{app_id}/workflow")
        assert response.status == 404 and "darkroom/demo-flux-2" in (await response.json())["detail"]
