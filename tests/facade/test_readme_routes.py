"""The routes the README says need no key, and the browser pages it says send a browser to sign in,
checked both ways against every route of the app with a key configured: those answer without a key
(not 401), the pages redirect to /editor/login, and every other route answers 401."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from queue_fakes import APP, FakeGenerator, serve

from server.settings import load_settings
from tests.readme import README, marked, ticked

Client = TestClient[web.Request, web.Application]

# A value for each path parameter that its route's pattern accepts.
SAMPLES = {
    "path": APP, "base": APP, "app_id": APP, "request_id": str(uuid.uuid4()), "name": "0.png",
    "owner": "me", "version": "1", "upload_id": uuid.uuid4().hex, "multipart_id": "m1", "part": "1",
    "tail": "index.html",
}  # fmt: skip
SPECIAL = {"/assets/{path}": "/assets/favicon.ico", "/static/{name}": "/static/none.css"}


def documented(kind: str) -> set[tuple[str, str]]:
    """(method, route) pairs from the README's marked list; a route without a method means GET."""
    (block,) = marked(README, kind)
    pairs = set()
    for entry in ticked(block.text):
        method, _, route = entry.rpartition(" ")
        if route.startswith("/"):
            pairs.add((method or "GET", route))
    assert pairs, block.where()
    return pairs


def concrete(route: str) -> str:
    return SPECIAL.get(route) or re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m[1]], route)


async def answer(client: Client, method: str, path: str) -> tuple[int, str]:
    """The status without a key, and where a chain of redirects (a slash added, then sign-in) leads."""
    for _ in range(3):
        response = await client.request(method, path, allow_redirects=False)
        if response.status not in (301, 302, 303, 307, 308):
            return response.status, ""
        path = response.headers["Location"]
        if path.startswith("/editor/login"):
            return response.status, path
    return response.status, path


async def test_the_readmes_key_free_and_sign_in_routes_hold_both_ways(tmp_path: Path) -> None:
    settings = load_settings({"DARKROOM_API_KEYS": "k1"}, data_dir=str(tmp_path))
    no_key, sign_in = documented("no-key-routes"), documented("sign-in-routes")
    async with serve(settings, FakeGenerator(settings)) as client:
        routes = {
            ("GET" if r.method == "*" else r.method, r.resource.canonical)
            for r in client.app.router.routes()
            if r.resource is not None and r.method != "HEAD"
        }
        unknown = (no_key | sign_in) - routes
        assert not unknown, f"the README names routes that do not exist: {unknown}"
        wrong = []
        for method, route in sorted(routes):
            path = concrete(route)
            match = await client.app.router.resolve(make_mocked_request(method, path))
            assert match.route.resource.canonical == route, f"sample path {path} is not {route}: add a sample"
            status, location = await answer(client, method, path)
            if (method, route) in no_key:
                ok = status != 401
            elif (method, route) in sign_in:
                ok = location.startswith("/editor/login")
            else:
                ok = status == 401
            if not ok:
                wrong.append(f"{method} {route}: {status} {location}")
    assert not wrong, f"routes that do not answer as the README says without a key: {wrong}"
