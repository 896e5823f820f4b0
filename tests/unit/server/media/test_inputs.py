"""Input files by URL: data: URIs, http(s) through the address policy (a loopback server), our own links."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from server.errors import BlockedAddressError, InputError
from server.media.inputs import fetch_input, input_area, sniff
from server.media.uploads import UploadStore
from server.security import netpolicy
from server.security.netpolicy import AddressPolicy
from server.settings import Settings, load_settings


def png_bytes(size: tuple[int, int] = (4, 3)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = png_bytes()


async def png(request: web.Request) -> web.Response:
    return web.Response(body=PNG, content_type="image/png")


async def unlabelled(request: web.Request) -> web.Response:
    return web.Response(body=PNG, content_type="application/octet-stream")


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
    await response.prepare(request)
    for _ in range(64):
        await response.write(b"\0" * 1024)
    return response


async def declared_big(request: web.Request) -> web.Response:
    return web.Response(body=b"\0" * 5000)


async def redirect(request: web.Request) -> web.Response:
    hops = int(request.match_info["n"])
    raise web.HTTPFound("/png" if hops == 0 else f"/redirect/{hops - 1}")


async def redirect_to(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["to"])


async def raw_redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": request.query["to"]})  # as sent, unparsed


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(body=PNG)


@pytest_asyncio.fixture
async def origin() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/png", png)
    app.router.add_get("/files/picture", unlabelled)
    app.router.add_get("/endless", endless)
    app.router.add_get("/declared-big", declared_big)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/raw-redirect", raw_redirect)
    app.router.add_get("/slow", slow)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": str(tmp_path),
        "inputs_allow_http": True,
        "outbound_allow_cidrs": "127.0.0.1/32",
        "input_max_bytes": 4096,
        "input_timeout_s": 2.0,
    }
    values.update(overrides)
    return load_settings({}, **values)


async def fetch(settings: Settings, url: str, **kwargs: object):  # type: ignore[no-untyped-def]
    policy = AddressPolicy.from_settings(settings)
    async with netpolicy.guarded_session(policy) as session:
        return await fetch_input(url, settings=settings, session=session, **kwargs)  # type: ignore[arg-type]


async def test_fetches_over_http_when_allowed(tmp_path: Path, origin: str) -> None:
    settings = make_settings(tmp_path)
    with input_area(settings, "req-1") as area:
        found = await fetch(settings, f"{origin}/png", dest_dir=area)
        assert found.path.parent == area and found.path.read_bytes() == PNG
        assert (found.content_type, found.size_bytes) == ("image/png", len(PNG))
        assert found.path.name.endswith(".png")
    assert not area.exists(), "the request's input area is removed afterwards"


async def test_content_type_is_sniffed_not_trusted(tmp_path: Path, origin: str) -> None:
    found = await fetch(make_settings(tmp_path), f"{origin}/files/picture")
    assert found.content_type == "image/png" and found.path.suffix == ".png"


async def test_loopback_is_refused_unless_allowed(tmp_path: Path, origin: str) -> None:
    with pytest.raises(BlockedAddressError, match="loopback.*DARKROOM_OUTBOUND_ALLOW_CIDRS"):
        await fetch(make_settings(tmp_path, outbound_allow_cidrs=""), f"{origin}/png")
    port = origin.rsplit(":", 1)[1]
    with pytest.raises(BlockedAddressError, match="localhost.*loopback"):
        await fetch(make_settings(tmp_path, outbound_allow_cidrs=""), f"http://localhost:{port}/png")


async def test_plain_http_needs_the_setting(tmp_path: Path, origin: str) -> None:
    with pytest.raises(BlockedAddressError, match=r"Only https://"):
        await fetch(make_settings(tmp_path, inputs_allow_http=False), f"{origin}/png")


async def test_redirects_are_followed_up_to_five(tmp_path: Path, origin: str) -> None:
    settings = make_settings(tmp_path)
    assert (await fetch(settings, f"{origin}/redirect/4")).path.read_bytes() == PNG  # 5 hops
    with pytest.raises(InputError, match="redirected more than 5 times"):
        await fetch(settings, f"{origin}/redirect/5")


@pytest.mark.parametrize(
    ("target", "message"),
    [("http://127.0.0.2:1/png", "loopback"), ("file:///etc/passwd", "Only https:// or http://")],
)
async def test_redirects_are_checked_by_the_same_policy(
    tmp_path: Path, origin: str, target: str, message: str
) -> None:
    with pytest.raises(BlockedAddressError, match=message):
        await fetch(make_settings(tmp_path), f"{origin}/redirect-to?to={target}")


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("https://[::1/a.png", "IPv6"),
        ("https://h:99999/", "Port out of range"),
        ("https://a%20b/x", "host name"),
    ],
)
async def test_a_redirect_to_an_unparseable_location_fails_that_input(
    tmp_path: Path, origin: str, location: str, reason: str
) -> None:
    """Each hop's Location goes through the one URL parser: a clear 422 for that input, never a 500."""
    with pytest.raises(
        InputError, match=f"redirected to a Location that cannot be fetched: .*{reason}"
    ) as caught:
        await fetch(make_settings(tmp_path), f"{origin}/raw-redirect?to={quote(location)}")
    assert caught.value.status == 422


@pytest.mark.parametrize("path", ["/endless", "/declared-big"])
async def test_size_limit_leaves_no_partial_file(tmp_path: Path, origin: str, path: str) -> None:
    settings = make_settings(tmp_path)
    with input_area(settings, "req-2") as area:
        with pytest.raises(InputError, match="too large.*limit is 4096") as caught:
            await fetch(settings, origin + path, dest_dir=area)
        assert caught.value.code == "input_too_large"
        assert list(area.iterdir()) == []


async def test_per_call_limits_override_the_settings(tmp_path: Path, origin: str) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(InputError, match="limit is 10 bytes"):
        await fetch(settings, f"{origin}/png", max_bytes=10)
    assert (await fetch(settings, f"{origin}/endless", max_bytes=1 << 20)).size_bytes == 64 * 1024
    with pytest.raises(InputError, match="longer than 0.2 s"):
        await fetch(settings, f"{origin}/slow", timeout_s=0.2)


async def test_http_errors_and_timeouts_are_input_errors(tmp_path: Path, origin: str) -> None:
    settings = make_settings(tmp_path, input_timeout_s=0.3)
    with pytest.raises(InputError, match="HTTP 404"):
        await fetch(settings, f"{origin}/missing")
    with pytest.raises(InputError, match="longer than 0.3 s"):
        await fetch(settings, f"{origin}/slow")


async def test_data_uris(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    encoded = base64.b64encode(PNG).decode()
    found = await fetch(settings, f"data:application/octet-stream;base64,{encoded}")
    assert (found.content_type, found.path.read_bytes()) == ("image/png", PNG)
    text = await fetch(settings, "data:text/plain,hello%20world")
    assert (text.content_type, text.path.read_bytes()) == ("text/plain", b"hello world")
    with pytest.raises(InputError, match="not valid base64"):
        await fetch(settings, "data:image/png;base64,@@@@")
    with pytest.raises(InputError, match="Malformed data URI"):
        await fetch(settings, "data:image/png;base64")
    with pytest.raises(InputError, match="too large"):
        await fetch(settings, "data:image/png;base64," + "A" * 8000)


async def test_accept_names_expected_and_got(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is text/plain; expected image/ or video/"):
        await fetch(make_settings(tmp_path), "data:text/plain,hi", accept=("image/", "video/"))


async def test_links_to_our_own_files_are_read_from_disk(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, outbound_allow_cidrs="")  # no network needed, nor allowed
    store = UploadStore(settings.uploads_path, 1 << 20)
    upload_id, name = store.begin("photo.png", "image/png")
    (settings.uploads_path / upload_id).mkdir(parents=True)
    (settings.uploads_path / upload_id / name).write_bytes(PNG)
    base = "https://127.0.0.1:8443"
    found = await fetch(settings, f"{base}/files/uploads/{upload_id}/{name}", own_base_url=base)
    assert (found.content_type, found.path.read_bytes()) == ("image/png", PNG)
    with pytest.raises(InputError, match="names no file on this server") as caught:
        await fetch(settings, f"{base}/files/uploads/{'0' * 32}/x.png", own_base_url=base)
    assert caught.value.status == 404
    with pytest.raises(BlockedAddressError):  # the same link is not "ours" without own_base_url
        await fetch(settings, f"{base}/files/uploads/{upload_id}/{name}")
    files = make_settings(tmp_path, outbound_allow_cidrs="", files_url="https://files.example.test")
    found = await fetch(
        files, f"https://files.example.test/files/uploads/{upload_id}/{name}", own_base_url=base
    )
    assert found.path.read_bytes() == PNG, "a link on DARKROOM_FILES_URL's host is ours too"


async def test_a_plain_session_is_refused(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TypeError, match="guarded_session"):
            await fetch_input("https://example.com/x.png", settings=make_settings(tmp_path), session=session)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG[:16], "image/png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"\0\0\0\x18ftypisom\0\0\0\0", "video/mp4"),
        (b"\0\0\0\x1cftypavif", "image/avif"),
        (b"\x1aE\xdf\xa3\x9fB\x86\x81", "video/webm"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"hello", None),
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected
