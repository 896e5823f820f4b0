"""The editor in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
`darkroom serve` over TLS with a key: sign in, the editor loads, our nodes are in its library, a run
queued in the editor shows its image, "Publish to darkroom" serves the workflow, fal's unmodified SDK
calls it, and a second version changes the output while @1 keeps the first.

Screenshots go to ``data/screenshots/`` (editor-signin.png, editor-run.png, editor-publish.png,
editor-video.png).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from browser import SCREENSHOTS, chromium_or_skip, open_page
from served import KEY, Server, check_image, run_sdk

from server.engine.models import load_manifest
from tests.marked import marked_flux2

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

NAME = "me/browser"
ARGUMENTS = {"prompt": "a red cube", "image_size": {"width": 96, "height": 64}, "seed": 5}


@pytest.fixture(scope="module")
def server(served_darkroom: Server) -> Server:
    chromium_or_skip()
    return served_darkroom


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(server: Server) -> AsyncIterator[Any]:
    async with open_page(ignore_https_errors=True) as opened:
        yield opened


# The save node's output as the editor has it: loaded through the editor's own /api/view, and drawn.
SHOWN_IMAGE = """async () => {
    const output = app.nodeOutputs['13'].images[0];
    const image = new Image();
    const { filename, type, subfolder } = output;
    const query = new URLSearchParams({ filename, type, subfolder });
    image.src = `api/view?${query}`;
    await image.decode();
    const node = app.graph.getNodeById(13);
    app.canvas.centerOnNode(node);
    app.canvas.setDirty(true, true);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    return { size: [image.naturalWidth, image.naturalHeight], drawn: (node.imgs?.length ?? 0) > 0,
      keys: Object.keys(node).join(","), widgets: (node.widgets || []).map(w => w.name + ':' + w.type) };
}"""


async def close_templates_browser(page: Any) -> None:
    """The templates browser a new user sees first covers the canvas: close it, and say it was seen."""
    await page.evaluate("app.extensionManager.setting.set('Comfy.TutorialCompleted', true)")
    for _ in range(20):
        closed = await page.evaluate(
            "(() => { const b = [...document.querySelectorAll('.p-dialog button')].find(b =>"
            " (b.getAttribute('aria-label') || '').toLowerCase().includes('close')"
            " || b.querySelector('.pi-times'));"
            " if (b) { b.click(); return true; } return false; })()"
        )
        if closed:
            return
        await page.wait_for_timeout(250)


def get_json(server: Server, path: str) -> Any:
    request = urllib.request.Request(server.base + path, headers={"Authorization": f"Key {KEY}"})
    with urllib.request.urlopen(request, context=server.ssl_context(), timeout=30) as response:
        return json.loads(response.read())


async def test_sign_in_edit_run_publish_and_call_it_with_fal_client(page: Any, server: Server) -> None:
    await page.goto(server.base + "/editor/")
    assert page.url.endswith("/editor/login"), "no session: the sign-in page, never the editor"
    await page.screenshot(path=str(SCREENSHOTS / "editor-signin.png"))
    await page.fill("#key", KEY)
    await page.click("button[type=submit]")
    await page.wait_for_url(server.base + "/editor/")
    await page.wait_for_function("window.app && window.app.graph && window.darkroom", timeout=60_000)
    (cookie,) = [c for c in await page.context.cookies() if c["name"] == "darkroom_session"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    ours = await page.evaluate(
        "Object.entries(LiteGraph.registered_node_types).filter(([k]) => k.startsWith('Darkroom'))"
        ".map(([k, v]) => [k, v.category])"
    )
    names = {name for name, _ in ours}
    assert {"DarkroomInputText", "DarkroomInputImageSize", "DarkroomInputSeed", "DarkroomSaveImage"} <= names
    assert all(category.startswith("darkroom") for _, category in ours), ours
    await close_templates_browser(page)

    prompt = marked_flux2(load_manifest())
    await page.evaluate("p => app.loadApiJson(p, 'marked')", prompt)
    async with page.expect_response(lambda r: r.url.endswith("/editor/api/prompt")) as queued:
        await page.evaluate("app.queuePrompt(0)")
    prompt_id = (await (await queued.value).json())["prompt_id"]
    await page.wait_for_function("app.nodeOutputs?.['13']?.images?.length > 0", timeout=90_000)
    shown = await page.evaluate(SHOWN_IMAGE)
    assert shown["size"] == [64, 48] and shown["drawn"], shown  # the editor draws it on the save node
    status = get_json(server, f"/queue/darkroom/editor/requests/{prompt_id}/status")
    assert status["status"] == "COMPLETED" and "error" not in status, "the run went through darkroom's queue"
    await page.screenshot(path=str(SCREENSHOTS / "editor-run.png"))

    await page.evaluate(f"() => {{ window.prompt = () => {json.dumps(NAME)}; }}")
    await page.evaluate("app.extensionManager.command.execute('darkroom.publish')")
    dialog = await page.wait_for_selector("#darkroom-publish-dialog", timeout=30_000)
    text = await dialog.inner_text()
    assert f"Published {NAME}@1" in text and f"/run/{NAME}" in text
    for label in ("curl", "Python", "JavaScript"):
        assert NAME in await page.inner_text(f"pre[data-snippet='{label}']")
    await page.screenshot(path=str(SCREENSHOTS / "editor-publish.png"))
    await page.click("#darkroom-publish-dialog button:text('Close')")

    code = f"""
    import urllib.request
    first = fal_client.subscribe({NAME!r}, arguments={ARGUMENTS!r})
    emit(first)
    """
    first = run_sdk(server, code)
    (image_v1,) = first["images"]
    check_image(server, image_v1, (96, 64))

    # Version 2: another guidance default, edited in the editor and published again.
    await page.evaluate(
        "() => { const n = app.graph.getNodeById(24); n.widgets.find(w => w.name === 'value').value = 7.5; }"
    )
    await page.evaluate("window.darkroom.publish()")
    assert (
        f"Published {NAME}@2" in await (await page.wait_for_selector("#darkroom-publish-dialog")).inner_text()
    )
    await page.click("#darkroom-publish-dialog button:text('Close')")
    latest = run_sdk(server, f"emit(fal_client.subscribe({NAME!r}, arguments={ARGUMENTS!r}))")
    pinned = run_sdk(server, f"emit(fal_client.subscribe({NAME + '@1'!r}, arguments={ARGUMENTS!r}))")
    bytes_of = {
        key: server.get(r["images"][0]["url"])[1]
        for key, r in (("v1", first), ("latest", latest), ("pinned", pinned))
    }
    assert bytes_of["latest"] != bytes_of["v1"], "version 2 changes the output"
    assert bytes_of["pinned"] == bytes_of["v1"], "@1 still gives the first version's output"
    realtime = f"""
    with fal_client.realtime({NAME + "@1"!r}, use_jwt=False) as connection:
        connection.send({ARGUMENTS!r})
        emit(connection.recv())
    """
    over_realtime = run_sdk(server, realtime)
    assert server.get(over_realtime["images"][0]["url"])[1] == bytes_of["v1"], "realtime serves it too"

    # A built-in endpoint opens in the editor with its fields as input nodes (then it publishes as above).
    await page.evaluate("() => { window.prompt = () => 'darkroom/demo-flux-2'; }")
    await page.evaluate("app.extensionManager.command.execute('darkroom.open')")
    await page.wait_for_function(
        "app.graph._nodes.filter(n => n.type === 'DarkroomInputText' && n.widgets[0].value === 'prompt')"
        ".length === 1 && app.graph._nodes.some(n => n.type === 'DarkroomInputImageSize')",
        timeout=30_000,
    )

    # A video endpoint: the saved mp4 plays in the editor's save node.
    await page.evaluate("window.darkroom.openEndpoint('darkroom/demo-wan-2.2-5b-t2v')")
    await page.wait_for_function("app.graph._nodes.some(n => n.type === 'DarkroomSaveVideo')", timeout=30_000)
    save = await page.evaluate("app.graph._nodes.find(n => n.type === 'DarkroomSaveVideo').id")
    await page.evaluate("app.queuePrompt(0)")
    await page.wait_for_function(f"app.nodeOutputs?.['{save}']?.images?.length > 0", timeout=120_000)
    await page.evaluate(f"app.canvas.centerOnNode(app.graph.getNodeById({save}))")
    playing = await page.wait_for_function(
        "[...document.querySelectorAll('video')]"
        ".find(v => v.readyState >= 2 && v.videoWidth > 0)?.videoWidth",
        timeout=30_000,
    )
    assert await playing.json_value() == 96  # the demo's 96x64 frames
    await page.screenshot(path=str(SCREENSHOTS / "editor-video.png"))
    assert page.problems == [], f"no console errors or failed requests, got {page.problems}"
