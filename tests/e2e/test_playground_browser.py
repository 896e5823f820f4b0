"""The playground in headless Chromium on the real stack, behind a key: sign in, the endpoint list, the
FLUX.2 demo run from its form (progress before the result, ComfyUI's sampler list, two runs side by
side), a 422 next to its fields, cancel, a published image-to-image endpoint with an uploaded image, a
Wan video from a dropped image and a video_url field's upload widget; then, against `darkroom serve` over
TLS, the page's curl, Python and JS snippets run as shown and give the page's own bytes.

Screenshots: ``data/screenshots/playground-*.png``.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browser import SCREENSHOTS, chromium_or_skip, open_page
from PIL import Image
from queue_stack import Client, facade
from served import KEY, Server

from server.engine.models import load_manifest
from server.engine.supervisor import Supervisor
from server.settings import PROJECT_ROOT, Settings
from tests import media_files
from tests.marked import marked_flux2_edit

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

AUTH = {"Authorization": f"Key {KEY}"}
DEMO = "darkroom/demo-flux-2"
JS_DIR = PROJECT_ROOT / "tests" / "e2e" / "js"

# Every change of the step counter, with whether a result was shown yet.
WATCH_PROGRESS = """() => {
    window.seen = [];
    new MutationObserver(() => window.seen.push({
        fraction: document.querySelector('#progress').value,
        result: Boolean(document.querySelector('#result img, #result video')),
    })).observe(document.querySelector('#steps'), { childList: true, characterData: true, subtree: true });
}"""
DROP = """async ([selector, b64]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], 'start.png', { type: 'image/png' }));
    const drop = new DragEvent('drop', { dataTransfer: data, bubbles: true });
    document.querySelector(selector).dispatchEvent(drop);
}"""


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(
    stack_settings: Settings, supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    chromium_or_skip()
    data_dir = tmp_path_factory.mktemp("playground")
    async with facade(stack_settings, supervisor, data_dir, api_keys=KEY) as test_client:
        yield test_client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(client: Client) -> AsyncIterator[Any]:
    """A signed-in page (the sign-in itself is the first test's)."""
    async with open_page() as opened:
        await sign_in(opened, f"{base(client)}/editor/login?next=/playground/")
        yield opened


async def sign_in(page: Any, url: str) -> None:
    await page.goto(url)
    await page.fill("#key", KEY)
    await page.click("button[type=submit]")
    await page.wait_for_selector("header nav")


def base(client: Client) -> str:
    return f"http://127.0.0.1:{client.server.port}"


async def open_endpoint(page: Any, client: Client, app_id: str) -> None:
    await page.goto(f"{base(client)}/playground/{app_id}")
    await page.wait_for_selector(".field[data-field=prompt]")


async def run_to_result(page: Any, timeout_ms: int = 120_000) -> None:
    await page.click("#run")
    await page.wait_for_selector("#status.ok >> text=done", timeout=timeout_ms)


async def natural_sizes(page: Any) -> list[list[int]]:
    sizes: list[list[int]] = await page.eval_on_selector_all(
        "#result img",
        "images => Promise.all(images.map(async (i) => {"
        " await i.decode(); return [i.naturalWidth, i.naturalHeight]; }))",
    )
    return sizes


async def test_sign_in_and_the_endpoint_list(client: Client) -> None:
    async with open_page() as page:
        await check_sign_in_and_list(page, client)


async def check_sign_in_and_list(page: Any, client: Client) -> None:
    await page.goto(base(client) + "/playground/")
    assert "/editor/login?next=/playground/" in page.url, "no session: the sign-in page"
    await page.fill("#key", KEY)
    await page.click("button[type=submit]")
    await page.wait_for_url(base(client) + "/playground/")
    demo = await page.wait_for_selector(f".endpoint[data-app='{DEMO}']")
    assert "models present" in await demo.inner_text()
    real = await page.inner_text(".endpoint[data-app='fal-ai/flux-2']")
    assert "3 model file(s) missing" in real and "darkroom models fetch flux2-vae" in real
    await page.fill("#filter", "wan")
    assert not await page.is_visible(f".endpoint[data-app='{DEMO}']")
    await page.screenshot(path=str(SCREENSHOTS / "playground-index.png"), full_page=True)
    assert page.problems == [], page.problems


async def test_flux2_demo_runs_with_progress_and_compares_two_runs(page: Any, client: Client) -> None:
    await open_endpoint(page, client, DEMO)
    samplers = await page.eval_on_selector_all(
        ".field[data-field=sampler] option", "o => o.map(x => x.value)"
    )
    assert samplers[0] == "default" and {"euler", "dpmpp_2m"} <= set(samplers), "ComfyUI's own list"
    assert not await page.is_visible(".field[data-field=sampler]"), "beyond-fal fields wait under Advanced"
    await page.fill(".field[data-field=prompt] textarea", "a red cube")
    await page.fill(".field[data-field=seed] input", "7")
    await page.evaluate(WATCH_PROGRESS)
    await run_to_result(page)
    seen = await page.evaluate("window.seen")
    assert any(0 < s["fraction"] < 1 and not s["result"] for s in seen), f"progress before the result: {seen}"
    assert await natural_sizes(page) == [[64, 64]]
    assert "seed 7" in await page.inner_text("#status")
    assert "Running" in (await page.text_content("#logs") or "")
    await page.click("#result img")  # the full-size view
    assert await page.get_attribute("#viewer img", "src") == await page.get_attribute("#result img", "src")
    assert await page.is_visible("#viewer img")
    await page.keyboard.press("Escape")
    download = await page.get_attribute("#result a[download]", "href")
    assert download == await page.get_attribute("#result img", "src"), "Download saves the shown image"

    await page.click("#advanced summary")
    await page.select_option(".field[data-field=sampler] select", "dpmpp_2m")
    await page.click(".tabs [data-tab=request]")
    assert json.loads(await page.inner_text("#code")) == {
        "prompt": "a red cube",
        "seed": 7,
        "sampler": "dpmpp_2m",
    }
    await page.click(".tabs [data-tab=curl]")
    assert f"/run/{DEMO}" in await page.inner_text("#code")
    await run_to_result(page)
    await page.wait_for_function("document.querySelectorAll('#history .run').length === 2")
    for checkbox in await page.query_selector_all("#history .run input[type=checkbox]"):
        await checkbox.check()
    await page.click("#compare-button")
    columns = await page.query_selector_all("#compare [data-compared]")
    assert len(columns) == 2
    texts = [await column.inner_text() for column in columns]
    assert "dpmpp_2m" in texts[0] and "sampler" in texts[1] and "seed" not in texts[0], texts
    await page.click("#history .run >> nth=1 >> text=Use")  # the first run back in the form
    assert await page.input_value(".field[data-field=sampler] select") == "default"
    await page.screenshot(path=str(SCREENSHOTS / "playground-flux2.png"), full_page=True)
    assert page.problems == [], page.problems


async def test_a_422_appears_next_to_its_fields(page: Any, client: Client) -> None:
    await open_endpoint(page, client, DEMO)
    await page.fill(".field[data-field=prompt] textarea", "too many steps")
    await page.fill(".field[data-field=num_inference_steps] input", "500")
    await page.click("#advanced summary")
    await page.fill(".field[data-field=shift] input", "1000")
    await page.click(".field[data-field=loras] button:text('Add LoRA')")
    await page.fill(".field[data-field=loras] [aria-label='LoRA path']", "")  # a row without a file
    await page.fill(".field[data-field=loras] [aria-label=scale]", "0.5")
    await page.click("#advanced summary")  # closed again: the error opens it
    await page.click("#run")
    steps = await page.wait_for_selector(".field[data-field=num_inference_steps].invalid .error")
    assert "less than or equal to 12 (darkroom/demo-flux-2: a CPU demo" in await steps.inner_text()
    assert "less than or equal to 100" in await page.inner_text(".field[data-field=shift] .error")
    lora_error = await page.inner_text(".field[data-field=loras] .error")
    assert lora_error.startswith("0.path: String should have at least 1 character"), lora_error
    assert await page.evaluate("document.querySelector('#advanced').open")
    assert "422" in await page.inner_text("#status")
    await page.screenshot(path=str(SCREENSHOTS / "playground-422.png"), full_page=True)
    await page.fill(".field[data-field=num_inference_steps] input", "2")
    await page.fill(".field[data-field=shift] input", "")
    suggested = await page.eval_on_selector_all("#lora-files option", "o => o.map(x => x.value)")
    assert "tiny/flux2-lora-a.safetensors" in suggested, suggested
    await page.fill(".field[data-field=loras] [aria-label='LoRA path']", "tiny/flux2-lora-a.safetensors")
    await page.click(".tabs [data-tab=request]")
    sent = json.loads(await page.inner_text("#code"))
    assert sent["loras"] == [{"path": "tiny/flux2-lora-a.safetensors", "scale": 0.5}], sent
    await run_to_result(page)
    assert await page.query_selector(".field.invalid") is None, "a good run clears the errors"


async def test_an_unserved_fal_object_field_is_sent_parsed_and_its_422_says_why(
    page: Any, client: Client
) -> None:
    """SD 3.5's controlnet (one of fal's objects darkroom does not serve): typed as JSON, sent as an
    object, refused next to its field with the reason."""
    await open_endpoint(page, client, "darkroom/demo-sd35")
    await page.fill(".field[data-field=prompt] textarea", "a lighthouse")
    await page.fill(
        ".field[data-field=controlnet] textarea", '{"path": "x", "control_image_url": "https://a/b.png"}'
    )
    await page.click(".tabs [data-tab=request]")
    assert json.loads(await page.inner_text("#code"))["controlnet"] == {
        "path": "x",
        "control_image_url": "https://a/b.png",
    }
    await page.click("#run")
    error = await page.wait_for_selector(".field[data-field=controlnet].invalid .error")
    assert "ControlNets are not served by darkroom" in await error.inner_text()


async def test_cancel_stops_a_running_request(page: Any, client: Client) -> None:
    await open_endpoint(page, client, "darkroom/test-slow")  # 30 s on the worker, interruptible
    await page.fill(".field[data-field=prompt] textarea", "never finished")
    await page.click("#run")
    await page.wait_for_selector("#steps >> text=/DarkroomTestSlow step [1-9]/", timeout=60_000)
    preview = await page.wait_for_selector("#preview:not([hidden])")  # the node's live preview
    assert (await preview.get_attribute("src") or "").startswith("data:image/jpeg;base64,")
    request_id = await page.get_attribute("#output-card", "data-request")
    await page.click("#cancel")
    await page.wait_for_selector("#status.warn >> text=cancelled", timeout=30_000)
    status = await client.get(f"/queue/darkroom/test-slow/requests/{request_id}/status", headers=AUTH)
    assert (await status.json()).get("error_type") == "request_cancelled"
    assert "cancelled" in await page.inner_text("#history .run >> nth=0")


async def test_an_image_endpoint_with_an_uploaded_image(page: Any, client: Client) -> None:
    published = await client.post(
        "/workflows", json={"name": "me/edit", "prompt": marked_flux2_edit(load_manifest())}, headers=AUTH
    )
    assert published.status == 201, await published.text()
    await open_endpoint(page, client, "me/edit")
    await page.fill(".field[data-field=prompt] textarea", "repaint it")
    files = [{"name": "start.png", "mimeType": "image/png", "buffer": png((80, 48), (200, 40, 40))}]
    await page.set_input_files(".field[data-field=image_url] input[type=file]", files=files)
    await page.wait_for_selector(".field[data-field=image_url] .help >> text=uploaded start.png")
    url = await page.input_value(".field[data-field=image_url] input[type=url]")
    assert re.fullmatch(rf"{re.escape(base(client))}/files/uploads/[^/]+/start\.png", url), url
    await run_to_result(page)
    assert await natural_sizes(page) == [[80, 48]], "the output has the uploaded image's size"
    await page.screenshot(path=str(SCREENSHOTS / "playground-upload.png"), full_page=True)
    assert page.problems == [], page.problems


async def test_a_wan_video_from_a_dropped_image(page: Any, client: Client) -> None:
    await open_endpoint(page, client, "darkroom/demo-wan-2.2-5b-i2v")
    await page.fill(".field[data-field=prompt] textarea", "it moves")
    start = base64.b64encode(png((120, 80), (40, 90, 200))).decode()
    await page.evaluate(DROP, [".field[data-field=image_url] .drop", start])
    await page.wait_for_selector(".field[data-field=image_url] .help >> text=uploaded start.png")
    await run_to_result(page, timeout_ms=180_000)
    playing = await page.wait_for_function(
        "(() => { const v = document.querySelector('#result video');"
        " return v && v.readyState >= 2 && v.videoWidth; })()",
        timeout=30_000,
    )
    assert await playing.json_value() == 96, "the 3:2 image picks 16:9: the demo's 96x64 frames"
    await page.screenshot(path=str(SCREENSHOTS / "playground-video.png"), full_page=True)
    # A video_url field has the image fields' upload widget, for videos: chosen, uploaded, played.
    await open_endpoint(page, client, "darkroom/demo-wan-2.2-a14b-v2v")
    field = ".field[data-field=video_url]"
    assert await page.get_attribute(f"{field} input[type=file]", "accept") == "video/*"
    clip = [{"name": "clip.mp4", "mimeType": "video/mp4", "buffer": media_files.mp4(4, width=48, height=32)}]
    await page.set_input_files(f"{field} input[type=file]", files=clip)
    await page.wait_for_selector(f"{field} .help >> text=uploaded clip.mp4")
    url = await page.input_value(f"{field} input[type=url]")
    assert re.fullmatch(rf"{re.escape(base(client))}/files/uploads/[^/]+/clip\.mp4", url), url
    video = f"document.querySelector('{field} video')"
    shown = f"(() => {{ const v = {video}; return !v.hidden && v.videoWidth; }})()"
    preview = await page.wait_for_function(shown, timeout=10_000)
    assert await preview.json_value() == 48, "the preview plays the uploaded clip"
    assert page.problems == [], page.problems


async def test_a_phone_in_dark_mode(client: Client, page: Any) -> None:
    cookies = await page.context.cookies()
    async with open_page(viewport={"width": 390, "height": 844}, color_scheme="dark") as phone:
        await phone.context.add_cookies(cookies)
        await open_endpoint(phone, client, DEMO)
        overflow = await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the phone"
        background = await phone.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(20, 20, 20)", background
        await phone.screenshot(path=str(SCREENSHOTS / "playground-phone-dark.png"), full_page=True)
        assert phone.problems == [], phone.problems


# ---- the snippets, run as shown against `darkroom serve` over TLS ----


@pytest.fixture(scope="module")
def server(served_darkroom: Server) -> Server:
    chromium_or_skip()
    return served_darkroom


def shown_env(comment: str, server: Server) -> dict[str, str]:
    """The environment a snippet's first line asks for (``# FAL_KEY=<key> FAL_RUN_HOST=... python ...``),
    plus trust for the test certificate."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FAL_") and not k.lower().endswith("_proxy")
    }
    for name, value in re.findall(r"([A-Z_]+)=(\S+)", comment):
        env[name] = KEY if value == "<key>" else value
    env.update(
        SSL_CERT_FILE=str(server.cert), NODE_EXTRA_CA_CERTS=str(server.cert), CURL_CA_BUNDLE=str(server.cert),
        NO_PROXY="127.0.0.1,localhost", FAL_KEY=KEY,
    )  # fmt: skip
    return env


def run_shown(command: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


async def test_the_snippets_run_as_shown(server: Server, tmp_path: Path) -> None:
    async with open_page(ignore_https_errors=True) as page:
        await sign_in(page, f"{server.base}/editor/login?next=/playground/{DEMO}")
        await page.wait_for_selector(".field[data-field=prompt]")
        await page.fill(".field[data-field=prompt] textarea", 'it\'s a "quoted" cube')
        await page.fill(".field[data-field=seed] input", "11")
        await run_to_result(page)
        shown = await page.get_attribute("#result img", "src")
        code = {}
        for tab in ("curl", "python", "javascript"):
            await page.click(f".tabs [data-tab={tab}]")
            code[tab] = await page.inner_text("#code")
        assert page.problems == [], page.problems
    page_bytes = server.get(shown)[1]

    python = tmp_path / "app.py"
    python.write_text(code["python"])
    printed = run_shown(
        [sys.executable, python.name], shown_env(code["python"].splitlines()[0], server), tmp_path
    )
    outputs = {"python": ast.literal_eval(printed.strip().splitlines()[-1])}
    curl = run_shown(["bash", "-c", code["curl"]], shown_env("", server), tmp_path)
    outputs["curl"] = json.loads(curl)
    if shutil.which("node") and (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        (tmp_path / "node_modules").symlink_to(JS_DIR / "node_modules")
        (tmp_path / "app.mjs").write_text(code["javascript"])
        printed = run_shown(
            ["node", "app.mjs"], shown_env(code["javascript"].splitlines()[0], server), tmp_path
        )
        outputs["javascript"] = json.loads(printed.strip().splitlines()[-1])
    elif os.environ.get("CI") == "true":
        pytest.fail("the JS snippet needs node and `npm ci --prefix tests/e2e/js`", pytrace=False)
    for name, result in outputs.items():
        assert result["seed"] == 11, name
        assert server.get(result["images"][0]["url"])[1] == page_bytes, f"{name} gives the page's image"
    secret = KEY.split(":")[1]  # signed in with it, and sent by curl, fal_client and the JS client
    assert secret not in server.log.read_text(errors="replace"), "the key is in the server's log"
