"""Keys with roles, managed at run time: every route of the router against each role (one walk), --apps
restrictions, create/rotate/revoke without a restart, requests only their own key may read, browser
sessions that carry their key's role, and a revocation that reaches a second fleet host within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from queue_fakes import APP, FakeGenerator, serve

from server.api.access import required_role
from server.api.auth import PUBLIC_GET_PREFIX, PUBLIC_PATHS
from server.cli import main
from server.security.roles import Role
from server.settings import load_settings
from tests import log_scan
from tests.postgres import PostgresServer

ADMIN_KEY = "roles-admin-key"
ADMIN = {"Authorization": f"Key {ADMIN_KEY}"}
Client = TestClient[web.Request, web.Application]
BAD_BODY = b"{not json"
BODY_METHODS = {"POST", "PUT", "PATCH"}


def fill(canonical: str) -> str:
    """A URL of the route: each parameter an id that exists nowhere (an app that does)."""
    return re.sub(
        r"\{(\w+)(?::[^}]*)?\}", lambda m: APP if m[1] in ("path", "base") else f"nope-{m[1]}", canonical
    )


def is_page(route: web.AbstractRoute) -> bool:
    """A page for people (HTML, redirects to sign in): the session test below checks those."""
    return route.method == "GET" and route.resource is not None and route.resource.canonical in PAGES


PAGES = {
    "/editor",
    "/editor/",
    "/editor/login",
    "/dashboard",
    "/dashboard/usage",
    "/playground",
    "/playground/",
    "/playground/{app_id}",
}


def key_header(secret: str) -> dict[str, str]:
    return {"Authorization": f"Key {secret}"}


async def create(client: Client, name: str, role: str, **extra: Any) -> str:
    response = await client.post("/keys", json={"name": name, "role": role, **extra}, headers=ADMIN)
    body = await response.json()
    assert response.status == 201, body
    assert body["name"] == name and body["role"] == role and "digest" not in body
    log_scan.register(body["key"])
    return str(body["key"])


def walked_routes(app: web.Application) -> list[tuple[str, str, Role]]:
    """(method, canonical path, least role) of every route a key reaches (not public, not a page)."""
    found = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or canonical in PUBLIC_PATHS or is_page(route):
            continue
        if route.method == "GET" and canonical.startswith(PUBLIC_GET_PREFIX):
            continue
        found.add((route.method, canonical, required_role(route.handler)))
    return sorted(found)


async def test_every_route_against_every_role(tmp_path: Path) -> None:
    """One walk over the router: each role is refused (403, fal's shape) exactly the routes above it,
    and reaches the others (whatever they then answer to a probe with unknown ids and a bad body)."""
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        keys = {role: await create(client, f"walk-{role.value}", role.value) for role in Role}
        routes = walked_routes(client.server.app)
        needs = {role: sum(1 for *_, r in routes if r is role) for role in Role}
        assert needs[Role.ADMIN] >= 12 and needs[Role.DEVELOPER] >= 8, needs  # keys, dashboard, nodes; editor
        for method, canonical, least in routes:
            kwargs: dict[str, Any] = {}
            if method in BODY_METHODS:
                kwargs = {"data": BAD_BODY, "headers": {"Content-Type": "application/json"}}
            for role, secret in keys.items():
                headers = {**kwargs.get("headers", {}), **key_header(secret)}
                response = await client.request(method, fill(canonical), **{**kwargs, "headers": headers})
                where = f"{method} {canonical} as {role.value} (needs {least.value}): {response.status}"
                refused = response.status == 403 and await refused_for_role(response)
                if role.covers(least):
                    # (a route may still refuse the probe with its own 403: the editor's relay a path)
                    assert response.status != 401 and not refused, where
                    continue
                assert refused, where
        document = await (await client.get("/openapi.json")).json()
        assert document["paths"]["/keys"]["post"]["x-darkroom-role"] == "admin"
        assert document["paths"]["/workflows"]["post"]["x-darkroom-role"] == "developer"
        assert "403" in document["paths"]["/keys"]["post"]["responses"]


async def refused_for_role(response: ClientResponse) -> bool:
    """A 403 of the role check: fal's error shape, naming the role needed."""
    if response.content_type != "application/json":
        return False
    body = await response.json()
    assert response.headers["x-fal-error-type"] == body["error_type"] == "forbidden", body
    return str(body["detail"]).startswith("This needs a ")


async def test_keys_are_created_rotated_and_revoked_without_a_restart(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        secret = await create(client, "ci-bot", "runner", rate_per_min=30)
        assert (await client.get("/endpoints", headers=key_header(secret))).status == 200
        again = await client.post("/keys", json={"name": "ci-bot"}, headers=ADMIN)
        assert again.status == 422 and (await again.json())["error_type"] == "key_exists"
        listed = await (await client.get("/keys", headers=ADMIN)).json()
        assert [(k["name"], k["role"], k["rate_per_min"]) for k in listed["keys"]] == [
            ("ci-bot", "runner", 30)
        ]
        assert (await client.get("/keys", headers=key_header(secret))).status == 403  # runners do not manage

        rotated = await (await client.post("/keys/ci-bot/rotate", headers=ADMIN)).json()
        log_scan.register(rotated["key"])
        assert (await client.get("/endpoints", headers=key_header(secret))).status == 401
        assert (await client.get("/endpoints", headers=key_header(rotated["key"]))).status == 200

        revoked = await client.delete("/keys/ci-bot", headers=ADMIN)
        assert revoked.status == 200
        refused = await client.get("/endpoints", headers=key_header(rotated["key"]))
        assert refused.status == 401 and "revoked" in (await refused.json())["detail"]
        assert (await client.delete("/keys/ci-bot", headers=ADMIN)).status == 404
        history = await (await client.get("/keys?revoked=true", headers=ADMIN)).json()
        assert history["keys"][0]["revoked_at"] is not None
        bad = await client.post("/keys", json={"name": "x y", "role": "root"}, headers=ADMIN)
        assert bad.status == 422 and {e["loc"][-1] for e in (await bad.json())["detail"]} == {"name", "role"}
        pattern = await client.post("/keys", json={"name": "p", "apps": ["a b"]}, headers=ADMIN)
        assert pattern.status == 422 and (await pattern.json())["detail"][0]["loc"] == ["body", "apps", 0]
        assert (await client.get("/endpoints", headers=ADMIN)).status == 200  # the configured key: admin


async def test_apps_restrict_runs_queues_and_tokens(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        secret = await create(client, "flux-only", "runner", apps=["darkroom/demo-flux-2*"])
        headers = key_header(secret)
        ran = await client.post(f"/run/{APP}", json={"prompt": "a cat"}, headers=headers)
        assert ran.status == 200, await ran.text()
        for path in (
            "/run/darkroom/demo-sd35",
            "/queue/darkroom/demo-sd35",
            "/run/darkroom/demo-sd35/stream",
        ):
            refused = await client.post(path, json={"prompt": "a cat"}, headers=headers)
            assert refused.status == 403, path
            if refused.content_type == "application/json":
                assert "may not call darkroom/demo-sd35" in (await refused.json())["detail"]
        token = await client.post("/tokens/", json={"allowed_apps": ["demo-sd35"]}, headers=headers)
        assert token.status == 403
        own = await client.post("/tokens/", json={"allowed_apps": ["darkroom/demo-flux-2"]}, headers=headers)
        assert own.status == 200


async def test_a_key_reads_only_its_own_requests(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        alice = key_header(await create(client, "alice", "runner"))
        bob = key_header(await create(client, "bob", "runner"))
        submitted = await (await client.post(f"/queue/{APP}", json={"prompt": "a"}, headers=alice)).json()
        status_url = f"/queue/{APP}/requests/{submitted['request_id']}/status"
        assert (await client.get(status_url, headers=alice)).status in (200, 202)
        assert (await client.get(status_url, headers=bob)).status == 404
        assert (await client.get(status_url, headers=ADMIN)).status in (200, 202)


async def test_a_browser_session_carries_its_keys_role(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        runner = await create(client, "browser-runner", "runner")
        origin = {"Origin": str(client.make_url("")).rstrip("/")}
        signed = await client.post(
            "/editor/login", data={"key": runner}, headers=origin, allow_redirects=False
        )
        assert signed.status == 303
        playground = await client.get("/playground/", allow_redirects=False)
        assert playground.status == 200
        assert nav_links(await playground.text()) == ["/playground/", "/dashboard/usage", "/docs"]
        assert (await client.get("/endpoints")).status == 200  # what the playground calls
        for page in ("/dashboard", "/editor/", "/dashboard/state"):
            assert (await client.get(page, allow_redirects=False)).status == 403, page
        publish = await client.post("/workflows", json={}, headers=origin)
        assert publish.status == 403  # the editor's Publish, refused by the server too
        await client.delete("/keys/browser-runner", headers=ADMIN)
        ended = await client.get("/playground/", allow_redirects=False)
        assert ended.status == 303 and ended.headers["Location"].startswith("/editor/login")


def nav_links(html: str) -> list[str]:
    nav = html.split("<nav>", 1)[1].split("</nav>", 1)[0]
    return re.findall(r'<a href="([^"]+)"', nav)


async def test_the_pages_show_each_role_only_the_links_it_may_open(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        every = ["/playground/", "/dashboard", "/dashboard/usage", "/editor/", "/docs"]
        expected = {
            "runner": ["/playground/", "/dashboard/usage", "/docs"],
            "developer": ["/playground/", "/dashboard/usage", "/editor/", "/docs"],
            "admin": every,
        }
        for role, links in expected.items():
            key = key_header(await create(client, f"nav-{role}", role))
            for page in ("/playground/", f"/playground/{APP}", "/dashboard/usage"):
                response = await client.get(page, headers=key)
                assert nav_links(await response.text()) == links, (role, page)
        dashboard = await client.get("/dashboard", headers=ADMIN)
        assert nav_links(await dashboard.text()) == every


async def test_a_key_revoked_on_one_fleet_host_is_refused_on_another_within_a_second(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = postgres_server.database()
    first, second = (
        load_settings({}, data_dir=str(tmp_path / name), api_keys=ADMIN_KEY, database_url=database)
        for name in ("a", "b")
    )
    async with serve(first, FakeGenerator(first)) as a, serve(second, FakeGenerator(second)) as b:
        secret = await create(a, "fleet-bot", "runner")
        created_at = time.monotonic()
        await until(b, secret, 200)
        assert time.monotonic() - created_at < 1.0
        assert (await a.delete("/keys/fleet-bot", headers=ADMIN)).status == 200
        revoked_at = time.monotonic()
        await until(b, secret, 401)
        assert time.monotonic() - revoked_at < 1.0, "the second host still took the revoked key"


async def until(client: Client, secret: str, status: int) -> None:
    """Poll a route with the key until it answers ``status`` (at most 2 s, so a failure says how long)."""
    async with asyncio.timeout(2.0):
        while (await client.get("/endpoints", headers=key_header(secret))).status != status:
            await asyncio.sleep(0.02)


async def test_the_cli_manages_keys_on_a_running_servers_store(tmp_path: Path) -> None:
    """``darkroom keys create`` writes the store a running server reads: its key works there at once."""
    role = "developer"
    settings = load_settings({}, data_dir=str(tmp_path), api_keys=ADMIN_KEY)
    async with serve(settings, FakeGenerator(settings)) as client:
        env = {"DARKROOM_DATA_DIR": str(tmp_path)}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            output = await asyncio.to_thread(_run_cli, ["keys", "create", "--name", "cli", "--role", role])
            secret = output.strip().splitlines()[-1]
            log_scan.register(secret)
            await until(client, secret, 200)
            # A spent cost budget, then raised from the shell: the running server follows at once.
            await asyncio.to_thread(_run_cli, ["keys", "limits", "cli", "--monthly-usd", "0"])
            await until_run(client, secret, 402)
            await asyncio.to_thread(_run_cli, ["keys", "limits", "cli", "--monthly-usd", "25"])
            await until_run(client, secret, 200)
        listed = await (await client.get("/keys", headers=ADMIN)).json()
        assert [(k["name"], k["role"], k["monthly_usd"]) for k in listed["keys"]] == [("cli", role, 25)]


async def until_run(client: Client, secret: str, status: int) -> None:
    """A run with ``secret`` answers ``status`` within the keys' refresh (a second)."""
    async with asyncio.timeout(5):
        while (
            await client.post(f"/run/{APP}", json={"prompt": "a"}, headers=key_header(secret))
        ).status != status:
            await asyncio.sleep(0.05)


def _run_cli(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()
