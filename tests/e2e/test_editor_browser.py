"""The editor in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
`darkroom serve` over TLS with a key, as a person uses it, on one page for the whole module: sign in (a
refusal's message goes as the key is typed again); a first visit shows the endpoint list, not ComfyUI's
template browser; the list searches; a run queued in the editor shows its image; the Publish dialog
(reached by its keybinding) checks the name as it is typed, says new endpoint or new version, lists the
request fields, and fits at 1280x800 and 390 px wide with its snippets' trust settings; fal's unmodified
SDK calls what it published, a second version changes the output while @1 keeps the first; the list
opens a pinned version; an unpublished endpoint's tab says so; an opened endpoint's input nodes sit in
a "Request fields" group beside what they feed, in view, each saying whether it is required and its
API default; a video endpoint plays in the editor.

Screenshots go to ``data/screenshots/editor-*.png``.
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
WIDE, NARROW = {"width": 1280, "height": 800}, {"width": 390, "height": 800}
ARGUMENTS = {"prompt": "a red cube", "image_size": {"width": 96, "height": 64}, "seed": 5}


@pytest.fixture(scope="module")
def server(served_darkroom: Server) -> Server:
    chromium_or_skip()
    return served_darkroom


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(server: Server) -> AsyncIterator[Any]:
    async with open_page(ignore_https_errors=True, viewport=WIDE) as opened:
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


def get_json(server: Server, path: str) -> Any:
    request = urllib.request.Request(server.base + path, headers={"Authorization": f"Key {KEY}"})
    with urllib.request.urlopen(request, context=server.ssl_context(), timeout=30) as response:
        return json.loads(response.read())


def delete(server: Server, path: str) -> int:
    request = urllib.request.Request(
        server.base + path, method="DELETE", headers={"Authorization": f"Key {KEY}"}
    )
    with urllib.request.urlopen(request, context=server.ssl_context(), timeout=30) as response:
        return int(response.status)


# The open dialog in the viewport: its card and Close inside it (Close on top: clickable), nothing in it
# wider than its box (no snippet or table cut at the edge).
DIALOG_FITS = """() => {
    const dialog = document.getElementById('darkroom-dialog');
    const rect = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    const close = dialog.querySelector('[data-close]');
    const [l, t, r, b] = rect(close);
    const body = dialog.querySelector('.dr-body');
    return {
        view: [innerWidth, innerHeight], card: rect(dialog.querySelector('.dr-card')), close: [l, t, r, b],
        closeOnTop: document.elementFromPoint((l + r) / 2, (t + b) / 2) === close,
        wide: [...dialog.querySelectorAll('pre, table, .dr-body, h2, p')]
            .filter((e) => e.scrollWidth > e.clientWidth + 1)
            .map((e) => e.tagName + ' ' + e.textContent.slice(0, 40)),
        scrolls: body.scrollHeight > body.clientHeight,
    };
}"""


async def check_dialog_fits(page: Any, shot: str) -> dict[str, Any]:
    fits = await page.evaluate(DIALOG_FITS)
    width, height = fits["view"]
    left, top, right, bottom = fits["card"]
    assert left >= 0 and right <= width and top >= 0 and bottom <= height, fits
    assert fits["close"][3] <= height and fits["close"][2] <= width and fits["closeOnTop"], fits
    assert fits["wide"] == [], f"cut at the edge: {fits['wide']}"
    await page.screenshot(path=str(SCREENSHOTS / shot))
    return fits


async def rows(page: Any) -> dict[str, str]:
    return await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#darkroom-open-list li')]"
        ".map(li => [li.dataset.appId, li.innerText]))"
    )


async def search(page: Any, text: str) -> dict[str, str]:
    await page.fill("#darkroom-open-search", text)
    return await rows(page)


async def test_sign_in_then_a_first_visit_shows_the_searchable_endpoint_list(
    page: Any, server: Server
) -> None:
    await page.goto(server.base + "/editor/")
    assert page.url.endswith("/editor/login"), "no session: the sign-in page, never the editor"
    await page.fill("#key", "not-a-key")
    await page.click("button[type=submit]")
    await page.wait_for_selector(".error")
    assert [p for p in page.problems if "401" in p and "/editor/login" in p] == page.problems != []
    page.problems.clear()  # the refusal's 401 was the point
    await page.screenshot(path=str(SCREENSHOTS / "editor-signin.png"))
    await page.type("#key", KEY[:3])
    assert await page.query_selector(".error") is None, "the refusal's message goes as the key is typed"
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

    # A first visit: darkroom's endpoint list, and no template browser after it.
    await page.wait_for_selector("#darkroom-open-list li", timeout=30_000)
    await page.wait_for_timeout(1000)
    templates = await page.evaluate("[...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")
    assert not any("Templates" in text for text in templates), templates
    await page.screenshot(path=str(SCREENSHOTS / "editor-first-visit.png"))

    endpoints = get_json(server, "/endpoints")["endpoints"]
    shown = await rows(page)
    assert sorted(shown) == sorted(e["app_id"] for e in endpoints), "every endpoint, nothing else"
    for entry in endpoints:  # built-in or published, image or video, model files here or missing
        text = shown[entry["app_id"]]
        assert ("built-in" in text) != entry["published"] and entry["output"] in text, (entry, text)
        missing = sum(not m["present"] for m in entry["models"])
        assert (f"{missing} model file" in text) if missing else ("models here" in text or "no model" in text)
    assert any(not e["ready"] for e in endpoints), "the demo set lists endpoints whose models are not here"
    found = await search(page, "flux DEV")
    assert "darkroom/demo-flux-dev" in found and all("flux" in k and "dev" in k for k in found), found
    assert all("video" in text for text in (await search(page, "video")).values())
    missing_rows = await search(page, "missing")
    assert missing_rows and all("missing" in text for text in missing_rows.values())
    assert await search(page, "no-such-endpoint-anywhere") == {}
    assert "No endpoint matches" in await page.inner_text("#darkroom-open-count")
    await search(page, "darkroom/demo")
    await check_dialog_fits(page, "editor-open-list.png")
    await page.set_viewport_size(NARROW)
    await check_dialog_fits(page, "editor-open-list-narrow.png")
    await page.set_viewport_size(WIDE)
    await page.keyboard.press("Escape")
    assert await page.query_selector("#darkroom-dialog") is None


async def test_edit_run_publish_through_the_dialog_and_call_it_with_fal_client(
    page: Any, server: Server
) -> None:
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

    # Publish: its keybinding opens the dialog; the name is checked as it is typed.
    await page.keyboard.press("Control+Alt+p")
    await page.wait_for_selector("#darkroom-publish-fields tr[data-field=prompt]", timeout=30_000)
    verdicts = {}
    for typed in ("Me/Browser", "comfy/x", "darkroom/demo-flux-2", NAME):
        await page.fill("#darkroom-publish-name", typed)
        verdicts[typed] = (
            await page.get_attribute("#darkroom-publish-verdict", "data-kind"),
            await page.is_disabled("[data-publish]"),
        )
    assert verdicts == {
        "Me/Browser": ("invalid", True), "comfy/x": ("invalid", True),
        "darkroom/demo-flux-2": ("taken", True), NAME: ("new", False),
    }, verdicts  # fmt: skip
    assert "New endpoint me/browser (version 1)" in await page.inner_text("#darkroom-publish-verdict")
    fields = await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#darkroom-publish-fields tbody tr')]"
        ".map(tr => [tr.dataset.field, [...tr.cells].map(c => c.innerText)]))"
    )
    assert fields["prompt"][2] == "required (no default)" and "at most 500" in fields["prompt"][3], fields
    assert fields["num_inference_steps"][1:] == ["integer", "2", "1 to 8"], fields
    assert fields["image_size"][2] == '{"width":64,"height":48}' and "16 to 256" in fields["image_size"][3]
    assert fields["seed"][2] == "none (random)" and "sync_mode" not in fields
    await check_dialog_fits(page, "editor-publish-dialog.png")
    await page.click("[data-publish]")
    await page.wait_for_selector("#darkroom-dialog pre[data-snippet=curl]", timeout=30_000)
    dialog = await page.inner_text("#darkroom-dialog")
    assert f"Published {NAME}@1" in dialog and f"/run/{NAME}" in dialog
    snippets = {
        label: await page.inner_text(f"pre[data-snippet='{label}']")
        for label in ("curl", "Python", "JavaScript")
    }
    assert all(NAME in text for text in snippets.values())
    assert "--cacert cert.pem" in snippets["curl"] and "SSL_CERT_FILE=cert.pem" in snippets["Python"]
    assert "NODE_EXTRA_CA_CERTS=cert.pem" in snippets["JavaScript"]
    assert (await check_dialog_fits(page, "editor-published.png"))["scrolls"], "long: its body scrolls"
    await page.set_viewport_size(NARROW)
    await check_dialog_fits(page, "editor-published-narrow.png")
    await page.click("#darkroom-dialog [data-close]")

    code = f"""
    import urllib.request
    first = fal_client.subscribe({NAME!r}, arguments={ARGUMENTS!r})
    emit(first)
    """
    first = run_sdk(server, code)
    (image_v1,) = first["images"]
    check_image(server, image_v1, (96, 64))

    # Version 2: another guidance default, edited in the editor and published again (at 390 px).
    await page.evaluate(
        "() => { const n = app.graph.getNodeById(24); n.widgets.find(w => w.name === 'value').value = 7.5; }"
    )
    await page.evaluate("window.darkroom.publishDialog()")
    await page.wait_for_selector("#darkroom-publish-fields tr[data-field=prompt]", timeout=30_000)
    assert await page.input_value("#darkroom-publish-name") == NAME, "the name it was published under"
    assert await page.get_attribute("#darkroom-publish-verdict", "data-kind") == "version"
    assert "version 2" in await page.inner_text("#darkroom-publish-verdict")
    await check_dialog_fits(page, "editor-publish-version-narrow.png")
    await page.click("[data-publish]")
    await page.wait_for_selector("#darkroom-dialog pre[data-snippet=curl]", timeout=30_000)
    assert f"Published {NAME}@2" in await page.inner_text("#darkroom-dialog-title")
    await page.click("#darkroom-dialog [data-close]")
    await page.set_viewport_size(WIDE)
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

    # The list shows its versions and opens the one picked.
    await page.evaluate("window.darkroom.chooseEndpoint()")
    await page.wait_for_selector("#darkroom-open-list li")
    assert "published · 2 versions" in (await search(page, NAME))[NAME]
    await page.select_option(f"li[data-app-id='{NAME}'] select", "1")
    await page.wait_for_function("app.graph.extra.darkroom?.version === 1", timeout=30_000)
    assert await page.evaluate(
        "app.graph.getNodeById(24).widgets.find(w => w.name === 'value').value"
    ) == pytest.approx(2.5), "version 1's guidance default"

    # Unpublished elsewhere: its open tab says so.
    assert delete(server, f"/workflows/{NAME}") == 200
    assert await page.evaluate("window.darkroom.checkEndpoint()") is False
    notice = await page.inner_text("#darkroom-endpoint-notice")
    assert f"{NAME} is no longer published" in notice
    await page.screenshot(path=str(SCREENSHOTS / "editor-unpublished.png"))


# The opened graph's layout and view: boxes (with title bars), what each input node feeds, the group.
LAYOUT = """() => {
    const g = app.graph, title = LiteGraph.NODE_TITLE_HEIGHT;
    const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
    const meets = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    const inputs = g._nodes.filter((n) => n.type.startsWith('DarkroomInput'));
    const others = g._nodes.filter((n) => !inputs.includes(n));
    const group = g._groups.find((x) => x.title === 'Request fields');
    const area = [group.pos[0], group.pos[1], group.pos[0] + group.size[0], group.pos[1] + group.size[1]];
    const fed = (n) => n.outputs.flatMap((o) => o.links || [])
        .map((id) => g.getNodeById(g.getLink(id).target_id));
    const overlaps = [];
    g._nodes.forEach((a, i) => g._nodes.slice(i + 1)
        .forEach((b) => meets(box(a), box(b)) && overlaps.push([a.id, b.id])));
    const within = (b) => b[0] >= area[0] && b[1] >= area[1] && b[2] <= area[2] && b[3] <= area[3];
    const face = (n) => n.widgets.find((w) => w.name === 'darkroom_api').face().text;
    const s = app.canvas.ds.scale, [ox, oy] = app.canvas.ds.offset;
    return {
        inside: inputs.every((n) => within(box(n))),
        intruders: others.filter((n) => meets(box(n), area)).map((n) => n.type),
        overlaps,
        leftOfWhatTheyFeed: inputs.every((n) => fed(n).length && fed(n).every((t) => t.pos[0] > box(n)[2])),
        groupOnScreen: [(area[0] + ox) * s, (area[1] + oy) * s], scale: s,
        faces: Object.fromEntries(inputs.map((n) => [n.widgets[0].value, face(n)])),
        tab: app.extensionManager.workflow.activeWorkflow.filename,
    };
}"""


async def test_an_opened_endpoint_is_laid_out_in_view_and_a_video_one_plays(
    page: Any, server: Server
) -> None:
    await page.keyboard.press("Control+Alt+o")
    await page.wait_for_selector("#darkroom-open-list li")
    await search(page, "demo-flux-2")
    assert await page.get_attribute("#darkroom-open-list li[aria-selected=true]", "data-app-id") == (
        "darkroom/demo-flux-2"
    )
    await page.keyboard.press("Enter")
    await page.wait_for_function(
        "app.graph.extra.darkroom?.app_id === 'darkroom/demo-flux-2' && app.graph._groups.length > 0",
        timeout=30_000,
    )
    # Not a published endpoint: the unpublished one's notice (the tab before) goes.
    await page.wait_for_function("!document.getElementById('darkroom-endpoint-notice')", timeout=5_000)
    await page.wait_for_timeout(500)  # drawn
    layout = await page.evaluate(LAYOUT)
    assert layout["inside"] and layout["intruders"] == [] and layout["overlaps"] == [], layout
    assert layout["leftOfWhatTheyFeed"], "each input node sits left of the nodes it feeds"
    x, y = layout["groupOnScreen"]
    assert 0 <= x < WIDE["width"] / 2 and 0 <= y < WIDE["height"] / 2 and layout["scale"] >= 0.6, layout
    assert layout["tab"] == "darkroom · demo-flux-2", "the tab keeps the owner"
    described = {f["name"]: f for f in get_json(server, "/endpoints/darkroom/demo-flux-2")["fields"]}
    steps = described["num_inference_steps"]
    assert layout["faces"]["prompt"] == "required · no API default (this text is for editor runs)"
    assert layout["faces"]["num_inference_steps"] == (
        f"optional · API default {steps['default']} ({steps['ge']} to {steps['le']})"
    ), layout["faces"]
    assert layout["faces"]["seed"] == "optional · random unless the request sends one"
    sent = await page.evaluate("(async () => (await app.graphToPrompt()).output)()")
    assert not any("darkroom_api" in node["inputs"] for node in sent.values()), "the face is not an input"
    await page.screenshot(path=str(SCREENSHOTS / "editor-opened.png"))

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
