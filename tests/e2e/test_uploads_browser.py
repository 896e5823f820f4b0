"""Uploaded pages never run on darkroom's origin (issue 21), in headless Chromium against `darkroom serve`
over TLS with a key. A signed-in browser opens an HTML file and an SVG uploaded through each upload route
(``POST /storage/upload/initiate`` + PUT, ``POST /files/upload``, the editor's ``/editor/api/upload/image``
served by ``/editor/api/view``): each planted page would mint a token with the session cookie
(``POST /tokens/``, as the probe's did). The test watches every request the browser makes: first that a
same-origin script with the session can mint one (so the watch sees an attack), then that none of the
planted files ran. darkroom's own pages load under their CSP without a refused script or style.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from browser import chromium_or_skip, open_page
from served import KEY, Server

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

MINT = (
    "fetch('/tokens/', {method: 'POST', headers: {'Content-Type': 'application/json'}, "
    "body: JSON.stringify({allowed_apps: ['darkroom/demo-flux-2']})})"
    ".then(r => r.text()).then(t => { document.title = 'RAN ' + t; })"
)
PLANTED = {
    "planted.html": (f"<!doctype html><title>planted</title><script>{MINT}</script>", "text/html"),
    "planted.svg": (
        f'<svg xmlns="http://www.w3.org/2000/svg"><script><![CDATA[{MINT}]]></script></svg>',
        "image/svg+xml",
    ),
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(served_darkroom: Server) -> AsyncIterator[Any]:
    """A browser signed in to the shared server (its session cookie), watching for calls to /tokens/."""
    chromium_or_skip()
    server = served_darkroom
    async with open_page(ignore_https_errors=True) as opened:
        opened.token_calls = []
        opened.on("request", lambda r: opened.token_calls.append(r.url) if "/tokens" in r.url else None)
        await opened.goto(server.base + "/editor/login?next=/dashboard")
        await opened.fill("#key", KEY)
        await opened.click("button[type=submit]")
        await opened.wait_for_url(server.base + "/dashboard")
        yield opened


def call(server: Server, path: str, data: bytes, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(
        server.base + path, data=data, headers={"Authorization": f"Key {KEY}", **headers}, method="POST"
    )
    with urllib.request.urlopen(request, context=server.ssl_context(), timeout=30) as response:
        return json.loads(response.read())


def upload_initiate(server: Server, name: str, body: bytes, content_type: str) -> str:
    initiate = json.dumps({"file_name": name, "content_type": content_type}).encode()
    urls = call(server, "/storage/upload/initiate", initiate, {"Content-Type": "application/json"})
    put = urllib.request.Request(
        urls["upload_url"], data=body, headers={"Content-Type": content_type}, method="PUT"
    )
    with urllib.request.urlopen(put, context=server.ssl_context(), timeout=30) as response:
        assert response.status == 200
    return str(urls["file_url"])


def upload_cdn(server: Server, name: str, body: bytes, content_type: str) -> str:
    answer = call(server, "/files/upload", body, {"Content-Type": content_type, "X-Fal-File-Name": name})
    return str(answer["access_url"])


async def upload_editor(page: Any, server: Server, name: str, body: bytes, content_type: str) -> str:
    """Through the editor, as its image upload does (the browser's session, a same-origin form post)."""
    status, answer = await page.evaluate(
        """async ([name, text, type]) => {
            const form = new FormData();
            form.append('image', new Blob([text], {type}), name);
            form.append('type', 'input');
            form.append('overwrite', 'true');
            const response = await fetch('/editor/api/upload/image', {method: 'POST', body: form});
            return [response.status, await response.json()];
        }""",
        [name, body.decode(), content_type],
    )
    assert status == 200, answer
    return (
        f"{server.base}/editor/api/view?filename={answer['name']}&type=input&subfolder={answer['subfolder']}"
    )


async def opened_as(page: Any, url: str) -> str:
    """Open ``url`` as a user clicking a link would: "download" when the browser saves it instead."""
    from playwright.async_api import Error as PlaywrightError

    try:
        async with page.expect_download(timeout=10_000) as download:
            with contextlib.suppress(PlaywrightError):  # "Download is starting": the navigation ends there
                await page.goto(url)
        await (await download.value).cancel()
        return "download"
    except PlaywrightError:  # the expect_download timed out: it was rendered
        await page.wait_for_timeout(1500)  # time for a script to run, if one could
        return "rendered"


async def test_the_watch_sees_a_same_origin_script_mint_a_token(page: Any, served_darkroom: Server) -> None:
    """The attack the planted files attempt works from a same-origin script: the watch must see it."""
    server = served_darkroom
    await page.goto(server.base + "/dashboard")
    page.token_calls.clear()
    await page.evaluate(MINT)
    await page.wait_for_function("document.title.startsWith('RAN')")
    assert page.token_calls == [server.base + "/tokens/"], page.token_calls
    assert (await page.title()).startswith('RAN "'), "the session minted a token: what a planted page wants"
    await page.goto(server.base + "/dashboard")
    page.token_calls.clear()


@pytest.mark.parametrize("name", sorted(PLANTED))
@pytest.mark.parametrize("route", ["initiate", "cdn", "editor"])
async def test_an_uploaded_page_does_not_run_when_a_signed_in_browser_opens_it(
    page: Any, served_darkroom: Server, route: str, name: str
) -> None:
    server = served_darkroom
    body, content_type = PLANTED[name]
    if route == "editor":
        url = await upload_editor(page, server, name, body.encode(), content_type)
    else:
        url = (upload_initiate if route == "initiate" else upload_cdn)(
            server, name, body.encode(), content_type
        )
    served = await page.context.request.get(url)
    assert served.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-type"] == "application/octet-stream", served.headers
    assert served.headers["content-disposition"].startswith("attachment;")
    page.token_calls.clear()
    assert await opened_as(page, url) == "download"
    assert page.token_calls == [], f"the planted {name} ran and called {page.token_calls}"
    assert not (await page.title()).startswith("RAN")


@pytest.mark.parametrize("path", ["/dashboard", "/playground/", "/playground/darkroom/demo-flux-2", "/docs"])
async def test_darkroom_pages_work_under_their_policy(page: Any, served_darkroom: Server, path: str) -> None:
    server = served_darkroom
    page.problems.clear()
    response = await page.goto(server.base + path)
    assert response is not None and response.status == 200
    assert "script-src 'self';" in response.headers["content-security-policy"]
    await page.wait_for_load_state("networkidle")
    if path == "/docs":
        await page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    elif path == "/dashboard":
        await page.wait_for_selector("#workers tr[data-worker='0']", timeout=30_000)
    else:
        await page.wait_for_selector("main *", timeout=30_000)
    refused = [p for p in page.problems if "Content Security Policy" in p or "Refused to" in p]
    assert refused == [] and page.problems == [], page.problems
