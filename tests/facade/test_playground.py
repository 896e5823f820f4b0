"""The playground's routes and what its pages call: sign-in, the endpoint list and descriptions, the
shared static files, and the browser session on the routes a run needs (token, cancel, uploads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, FakeGenerator, serve

from server.settings import Settings, load_settings

Client = TestClient[web.Request, web.Application]
KEY = "play-key"
AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys=KEY)


def origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{client.server.port}"}


async def sign_in(client: Client) -> None:
    response = await client.post(
        "/editor/login", data={"key": KEY}, headers=origin(client), allow_redirects=False
    )
    assert response.status == 303


async def json_of(client: Client, path: str, **kw: Any) -> Any:
    response = await client.get(path, **kw)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_pages_send_a_browser_without_a_session_to_sign_in(client: Client) -> None:
    to_index = await client.get("/playground", allow_redirects=False)
    assert to_index.status == 308 and to_index.headers["Location"] == "/playground/"
    for path in ("/playground/", f"/playground/{APP}"):
        page = await client.get(path, allow_redirects=False)
        assert page.status == 303 and page.headers["Location"] == f"/editor/login?next={path}", path
    for path in ("/endpoints", f"/endpoints/{APP}"):
        assert (await client.get(path)).status == 401, path
    assert (await client.post("/tokens/", json={"allowed_apps": [APP]})).status == 401

    await sign_in(client)
    page = await client.get(f"/playground/{APP}")
    assert page.status == 200 and "/static/playground.js" in await page.text()
    assert "/static/playground-index.js" in await (await client.get("/playground/")).text()
    assert b'fetch("/endpoints"' in (await (await client.get("/static/playground-index.js")).read())
    missing = await client.get("/playground/nobody/nothing")
    assert missing.status == 404 and "nobody/nothing" in (await missing.json())["detail"]
    assert (await client.get("/playground/darkroom/editor")).status == 404, "the editor's runs are no app"


async def test_the_endpoint_list_says_which_model_files_are_here(client: Client) -> None:
    listed = {e["app_id"]: e for e in (await json_of(client, "/endpoints", headers=AUTH))["endpoints"]}
    assert "darkroom/editor" not in listed and "fal-ai/flux-2" in listed and APP in listed
    flux2 = listed["fal-ai/flux-2"]
    assert flux2["output"] == "images" and not flux2["ready"] and not flux2["published"]
    files = {m["name"]: m for m in flux2["models"]}
    assert set(files) == {"flux2-dev-fp8mixed", "mistral3-small-flux2-fp8", "flux2-vae"}
    assert (
        files["flux2-vae"]["fetch"].startswith("darkroom models fetch flux2-vae")
        and not files["flux2-vae"]["present"]
    )
    assert listed["darkroom/demo-wan-2.2-5b-i2v"]["output"] == "video"


async def test_a_description_has_every_field_for_the_form(client: Client, settings: Settings) -> None:
    for name in ("style/a.safetensors", "b.safetensors", "cache/0123.safetensors", "notes.txt"):
        (settings.models_path / "loras" / name).parent.mkdir(parents=True, exist_ok=True)
        (settings.models_path / "loras" / name).write_bytes(b"")
    described = await json_of(client, f"/endpoints/{APP}", headers=AUTH)
    fields = {f["name"]: f for f in described["fields"]}
    assert described["fields"][0]["name"] == "prompt" and fields["prompt"]["required"]
    assert fields["image_size"]["default"] == {"width": 64, "height": 64}
    assert fields["image_size"]["presets"]["square_hd"] == {"width": 1024, "height": 1024}
    assert (fields["num_inference_steps"]["ge"], fields["num_inference_steps"]["le"]) == (1, 12)
    assert fields["output_format"]["choices"] == ["jpeg", "png", "webp"]
    assert fields["sampler"]["choices"] == ["default"], "no worker asked: only the endpoint's own"
    advanced = {name for name, f in fields.items() if f["advanced"]}
    assert advanced == {"loras", "sampler", "scheduler", "sigmas", "shift", "denoise", "vae", "model_blend"}
    assert fields["loras"]["item"]["properties"]["scale"]["maximum"] == 8
    assert fields["loras"]["files"] == ["b.safetensors", "style/a.safetensors"], "not the download cache"
    assert described["urls"]["queue"].endswith(f"/queue/{APP}") and described["output"] == "images"
    lora = await json_of(client, "/endpoints/fal-ai/flux-2/lora", headers=AUTH)
    assert not {f["name"]: f for f in lora["fields"]}["loras"]["advanced"], "fal's own field there"
    wan = await json_of(client, "/endpoints/darkroom/demo-wan-2.2-5b-i2v", headers=AUTH)
    assert wan["output"] == "video" and {f["name"]: f for f in wan["fields"]}["image_url"]["required"]
    unknown = await client.get("/endpoints/nobody/nothing", headers=AUTH)
    assert unknown.status == 404 and "GET /endpoints" in (await unknown.json())["detail"]


async def test_the_session_mints_a_token_and_cancels_from_our_pages_only(
    client: Client, fake: FakeGenerator
) -> None:
    await sign_in(client)
    assert (await json_of(client, "/endpoints"))["endpoints"]
    token = await client.post("/tokens/", json={"allowed_apps": [APP]}, headers=origin(client))
    assert token.status == 200 and isinstance(await token.json(), str)
    forged = await client.post(
        "/tokens/", json={"allowed_apps": [APP]}, headers={"Origin": "https://evil.example"}
    )
    assert forged.status == 401, "a cross-site request does not carry the session"

    submitted = await client.post(f"/queue/{APP}", json={"prompt": "a cube"}, headers=AUTH)
    cancel_path = "/" + (await submitted.json())["cancel_url"].split("/", 3)[3]
    assert (await client.put(cancel_path, headers={"Origin": "https://evil.example"})).status == 401
    cancelled = await client.put(cancel_path, headers=origin(client))
    assert cancelled.status == 202, await cancelled.text()

    initiated = await client.post(
        "/storage/upload/initiate?storage_type=fal-cdn-v3",
        json={"content_type": "image/png", "file_name": "a.png"}, headers=origin(client),
    )  # fmt: skip
    assert initiated.status == 200 and "upload_url" in await initiated.json()


async def test_static_files_are_public_and_revalidated(client: Client) -> None:
    script = await client.get("/static/snippets.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert "export function snippets" in await script.text()
    again = await client.get("/static/snippets.js", headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304
    assert (await client.get("/static/darkroom.css")).content_type == "text/css"
    missing = await client.get("/static/server.py")
    assert missing.status == 404 and "snippets.js" in (await missing.json())["detail"]


async def test_open_access_needs_no_sign_in(tmp_path: Path) -> None:
    open_settings = load_settings({}, data_dir=str(tmp_path / "open"))
    async with serve(open_settings, FakeGenerator(open_settings)) as open_client:
        assert (await open_client.get(f"/playground/{APP}", allow_redirects=False)).status == 200
        assert (await json_of(open_client, "/endpoints"))["endpoints"]
        token = await open_client.post("/tokens/", json={"allowed_apps": [APP]}, headers=origin(open_client))
        assert token.status == 200
