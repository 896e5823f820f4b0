"""Hostile input in-process, one test per class an independent probe found (issue 21): user files as
active content, unparseable URLs, names a filesystem refuses, /ws messages past the body's limits,
secrets in bodies and logs, forged log lines, and what /ready tells a stranger. The worker boundary is
``FakeGenerator``; ``darkroom serve``'s own runner (``malformed.runner``) where aiohttp's parser is the
subject. tests/e2e/test_bad_input.py drives the same classes against the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from queue_fakes import FakeGenerator, FakeSupervisor, serve

from server.api import malformed
from server.api.security_headers import EDITOR_CSP, PAGE_CSP, USER_FILE_CSP, relayed_headers
from server.api.state import QUEUE
from server.app import create_app
from server.security.untrusted import LogFormatter
from server.settings import Settings, load_settings

KEY = "hostile-key-7c21e9"
AUTH = {"Authorization": f"Key {KEY}"}
FLUX, I2V = "darkroom/demo-flux-2", "darkroom/demo-wan-2.2-5b-i2v"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)
HTML = b"<!doctype html><script>fetch('/tokens/', {method: 'POST'})</script>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/tokens/")</script></svg>'
BAD_URLS = [
    "https://evil.invalid\\@127.0.0.1/a.png",
    "https://[::1/a.png",
    "https://h:99999/",
    "https://a b/c.png",
]

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=str(tmp_path), api_keys=KEY, body_max_bytes=64 * 1024)


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with serve(settings, FakeGenerator(settings)) as test_client:
        yield test_client


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def upload(client: Client, route: str, name: str, data: bytes, content_type: str) -> str:
    """``data`` uploaded through ``route``; the path it is served at."""
    if route == "initiate":
        body = {"file_name": name, "content_type": content_type}
        urls = await (await client.post("/storage/upload/initiate", json=body, headers=AUTH)).json()
        put = await client.put(path_of(urls["upload_url"]), data=data, headers={"Content-Type": content_type})
        assert put.status == 200, await put.text()
        return path_of(urls["file_url"])
    headers = {**AUTH, "Content-Type": content_type, "X-Fal-File-Name": name}
    answer = await client.post("/files/upload", data=data, headers=headers)
    assert answer.status == 200, await answer.text()
    return path_of((await answer.json())["access_url"])


@pytest.mark.parametrize("route", ["initiate", "cdn"])
@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [("x.html", HTML, "text/html"), ("y.svg", SVG, "image/svg+xml"), ("z.png", HTML, "image/png")],
)
async def test_an_uploaded_page_is_an_attachment_that_cannot_run(
    client: Client, route: str, name: str, data: bytes, content_type: str
) -> None:
    served = await client.get(await upload(client, route, name, data, content_type))
    assert served.status == 200 and await served.read() == data
    assert served.headers["Content-Type"] == "application/octet-stream", "the bytes decide, not the claim"
    assert served.headers["Content-Disposition"].startswith("attachment;")
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Security-Policy"] == USER_FILE_CSP


async def test_media_is_served_inline_by_its_bytes_whatever_its_name(client: Client) -> None:
    served = await client.get(await upload(client, "cdn", "evil.html", PNG, "text/html"))
    assert served.headers["Content-Type"] == "image/png" and "Content-Disposition" not in served.headers
    assert served.headers["Content-Security-Policy"] == USER_FILE_CSP
    ranged = await client.get(
        await upload(client, "initiate", "a.png", PNG, "image/png"), headers={"Range": "bytes=8-"}
    )
    assert ranged.status == 206 and ranged.headers["Content-Type"] == "image/png"


async def test_an_output_page_is_an_attachment_too(client: Client) -> None:
    stored = await client.app[QUEUE].outputs.write(
        "00000000-0000-4000-8000-0000000000aa", "0.svg", SVG, "image/svg+xml"
    )
    served = await client.get(stored.route)
    assert served.headers["Content-Type"] == "application/octet-stream"
    assert served.headers["Content-Disposition"] == "attachment; filename*=UTF-8''0.svg"
    assert served.headers["Content-Security-Policy"] == USER_FILE_CSP


@pytest.mark.parametrize(
    "page", ["/dashboard", "/playground/", f"/playground/{FLUX}", "/docs", "/editor/login"]
)
async def test_darkroom_pages_send_a_policy_without_inline_script(client: Client, page: str) -> None:
    response = await client.get(page, headers=AUTH)
    assert response.status == 200 and response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert policy == PAGE_CSP and "frame-ancestors 'none'" in policy
    script_src = re.search(r"script-src ([^;]*)", policy)
    assert script_src is not None and "unsafe-inline" not in script_src[1]
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    inline = [tag for tag in re.findall(r"<script\b[^>]*>", await response.text()) if "src=" not in tag]
    assert inline == [], f"{page} has inline scripts the policy would block"


def test_what_the_editor_relays_gets_its_policy() -> None:
    """The editor's page: eval'd script for ComfyUI's bundles, never inline script; any other page or SVG
    ComfyUI serves (its folders hold what users put there) the user files' sandbox."""
    editor = relayed_headers("", "text/html; charset=utf-8")["Content-Security-Policy"]
    assert editor == EDITOR_CSP and "frame-ancestors 'none'" in editor
    script_src = re.search(r"script-src ([^;]*)", editor)
    assert script_src is not None and "unsafe-inline" not in script_src[1]
    for tail, content_type in [("extensions/x/a.svg", "image/svg+xml"), ("templates/t.html", "text/html")]:
        assert relayed_headers(tail, content_type) == {"Content-Security-Policy": USER_FILE_CSP}
    assert relayed_headers("assets/index.js", "text/javascript") == {}


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("route", ["queue", "run", "stream"])
async def test_an_unparseable_image_url_is_a_422_at_submit(client: Client, url: str, route: str) -> None:
    path = {"queue": f"/queue/{I2V}", "run": f"/run/{I2V}", "stream": f"/run/{I2V}/stream"}[route]
    response = await client.post(path, json={"prompt": "x", "image_url": url}, headers=AUTH)
    text = await response.text()
    assert response.status == 422, text
    (entry,) = json.loads(text.removeprefix("data: "))["detail"]  # the stream's one event, or the body
    assert entry["loc"] == ["body", "image_url"] and "https://" in entry["msg"]
    assert client.app[QUEUE].queue_length() == 0, "refused at submit, never queued to fail later"


@pytest.mark.parametrize("url", BAD_URLS)
async def test_an_unparseable_lora_url_or_webhook_is_a_422(client: Client, url: str) -> None:
    lora = await client.post(f"/queue/{FLUX}", json={"prompt": "x", "loras": [{"path": url}]}, headers=AUTH)
    assert lora.status == 422
    assert (await lora.json())["detail"][0]["loc"] == ["body", "loras", 0, "path"]
    hook = await client.post(
        f"/queue/{FLUX}", params={"fal_webhook": url}, json={"prompt": "x"}, headers=AUTH
    )
    assert hook.status == 422
    assert (await hook.json())["detail"][0]["loc"] == ["query", "fal_webhook"]
    assert client.app[QUEUE].queue_length() == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("loras", [{"path": "tiny/x.safetensors\x00.txt"}]), ("loras", [{"path": "hf://o/r/a b.safetensors"}]),
     ("vae", "a\nFORGED"), ("vae", "x" * 300),
     ("model_blend", [{"model": "a\x00b", "weight": 1}])],
)  # fmt: skip
async def test_a_name_no_filesystem_holds_is_a_422(client: Client, field: str, value: Any) -> None:
    response = await client.post(f"/run/{FLUX}", json={"prompt": "x", field: value}, headers=AUTH)
    assert response.status == 422, await response.text()
    assert (await response.json())["detail"][0]["loc"][:2] == ["body", field]


async def test_ws_messages_get_the_body_limits_and_the_socket_stays_usable(client: Client) -> None:
    async with client.ws_connect("/ws", headers=AUTH) as ws:
        hostile = [
            '{"action": "subscribe", "request_ids": ' + "[" * 5000 + "]" * 5000 + "}",
            '{"action": "subscribe", "request_ids": [' + "9" * 5000 + "]}",
            '{"action": "subscribe", "request_ids": [NaN]}',
            '{"action": "submit", "app_id": "'
            + FLUX
            + '", "input": {"prompt": "x"}, "webhook_url": "https://[::1/"}',
        ]
        for text in hostile:
            await ws.send_str(text)
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "error" and answer["status_code"] in (400, 422), answer
        await ws.send_str(json.dumps({"action": "subscribe", "request_ids": ["unknown"], "ref": 7}))
        answer = await ws.receive_json(timeout=5)
        assert answer["status_code"] == 404 and answer["ref"] == 7, "the same connection still answers"
        await ws.send_str(json.dumps({"action": "subscribe", "request_ids": ["x" * 70_000]}))
        closing = await ws.receive(timeout=5)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1009  # too big


async def test_two_authorization_headers_are_a_400(client: Client) -> None:
    headers = [("Authorization", f"Key {KEY}"), ("Authorization", "Key other")]
    response = await client.get("/workflows", headers=headers)
    assert response.status == 400 and (await response.json())["error_type"] == "invalid_request"
    assert "other" not in await response.text() and KEY not in await response.text()


async def test_ready_tells_a_stranger_ready_or_not_only(client: Client) -> None:
    stranger = await client.get("/ready")
    assert stranger.status == 200 and await stranger.json() == {"status": "ready"}
    keyed = await (await client.get("/ready", headers=AUTH)).json()
    assert keyed["workers"][0]["state"] == "ready"


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[int]:
    """The app as ``darkroom serve`` runs it (its runner, access log and log format), on loopback."""
    app = create_app(settings, FakeSupervisor(), run_supervisor=False)  # type: ignore[arg-type]
    runner = malformed.runner(app, keepalive_timeout_s=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def raw(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    header, _, body = answer.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Any:
    """Everything logged, formatted as ``darkroom serve`` formats it."""
    caplog.set_level(logging.INFO)
    formatter = LogFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return lambda: "\n".join(formatter.format(record) for record in caplog.records)


MALFORMED = [
    b"Authorization: Key " + KEY.encode() + b"\x01x\r\n",  # a control character after the key
    b"Authorization: Key " + KEY.encode() + b"\r\n x\r\n",  # an obs-fold
    b"Authorization: Key " + KEY.encode() + b"\x7f\r\n",
    b"X-Other: \x00" + KEY.encode() + b"\r\n",
]


@pytest.mark.parametrize("header", MALFORMED)
async def test_aiohttp_parser_errors_come_in_the_envelope_without_the_key(
    settings: Settings, logged: Any, header: bytes
) -> None:
    async with served(settings) as port:
        status, headers, body = await raw(port, b"GET /workflows HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["error_type"] == "malformed_request" and answer["detail"].startswith(
        "Malformed HTTP request"
    )
    assert KEY.encode() not in body and KEY not in logged() and "Traceback" not in logged()


async def test_the_access_log_redacts_credentials_and_escapes_what_it_shows(
    settings: Settings, logged: Any
) -> None:
    async with served(settings) as port, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        for query in (f"key={KEY}", f"fal_jwt_token={KEY}", f"token={KEY}", f"auth={KEY}", f"API_KEY={KEY}"):
            async with http.get(f"{base}/workflows?{query}&x=1", headers={"Referer": f"{base}/p?key={KEY}"}):
                pass
        async with http.get(f"{base}/files/a%0A2026-01-01%20FORGED/x.png"):
            pass
        async with http.post(
            f"{base}/run/{FLUX}", json={"prompt": "p", "vae": "a\nFORGED"}, headers=AUTH
        ) as r:
            assert r.status == 422
    text = logged()
    assert KEY not in text and "key=***&x=1" in text and "API_KEY=***" in text and "/p?key=***" in text
    assert not any(line.startswith("FORGED") or "\r" in line for line in text.splitlines())
    assert "a%0A2026-01-01%20FORGED" in text, "the request line as sent, %-encoded"


async def test_files_url_puts_file_urls_on_a_host_of_their_own(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), api_keys=KEY, files_url="https://files.example.test/"
    )
    async with serve(settings, FakeGenerator(settings)) as client:
        body = {"file_name": "a.png", "content_type": "image/png"}
        urls = await (await client.post("/storage/upload/initiate", json=body, headers=AUTH)).json()
        assert urls["file_url"].startswith("https://files.example.test/files/uploads/")
        assert urls["upload_url"].startswith(f"http://127.0.0.1:{client.port}/files/uploads/"), (
            "uploads: the API"
        )
        assert (await client.put(path_of(urls["upload_url"]), data=PNG)).status == 200
        served = await client.get(path_of(urls["file_url"]))  # the proxy sends the files host here
        assert served.status == 200 and await served.read() == PNG
        headers = {**AUTH, "Content-Type": "image/png", "X-Fal-File-Name": "b.png"}
        cdn = await (await client.post("/files/upload", data=PNG, headers=headers)).json()
        assert cdn["access_url"].startswith("https://files.example.test/files/uploads/")


async def test_realtime_frames_get_the_body_limits_and_the_socket_stays_usable(client: Client) -> None:
    nested: Any = "x"
    for _ in range(200):
        nested = [nested]
    async with client.ws_connect(f"/run/{FLUX}/realtime", headers=AUTH) as ws:
        for frame, reason in [
            (msgpack.packb({"prompt": "x", "loras": nested}), "nested too deeply"),
            (msgpack.packb({"prompt": "x", "loras": [{"path": "https://[::1/x"}]}), "IPv6"),
        ]:
            await ws.send_bytes(frame)
            message = await ws.receive(timeout=5)
            assert message.type is WSMsgType.TEXT and reason in message.data, message
            assert json.loads(message.data)["type"] == "x-fal-error"
        await ws.send_bytes(msgpack.packb({"prompt": "still here", "request_id": "r"}))
        answer = await ws.receive(timeout=10)
        assert answer.type is WSMsgType.BINARY and msgpack.unpackb(answer.data)["prompt"] == "still here"
        await ws.receive(timeout=5)  # its timings
        await ws.send_bytes(b"\x00" * (70 * 1024))
        closing = await ws.receive(timeout=5)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1009  # too big


async def test_error_details_name_files_relative_to_darkroom_folders(settings: Settings) -> None:
    from server.errors import InputError

    async def fails(request: web.Request) -> web.Response:
        raise InputError(f"cannot read {settings.uploads_path}/ab/x.png from {settings.models_path}/loras")

    app = create_app(settings, FakeSupervisor(), run_supervisor=False)  # type: ignore[arg-type]
    app.router.add_get("/probe-paths", fails)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        body = await (await client.get("/probe-paths", headers=AUTH)).json()
    assert body["detail"] == "cannot read uploads/ab/x.png from loras" and str(settings.data_path) not in str(
        body
    )
