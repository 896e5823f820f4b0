"""Bad-input drill against one host (`darkroom serve`, one CPU ComfyUI worker, the tiny demo models):
a corpus of requests a careless or hostile client sends, each expecting a specific 4xx and words in its
message: wrong types, out-of-range values, malformed and oversized data URIs, files that are not images,
a decompression bomb, SSRF targets (loopback, private, metadata, redirects into them from an allowed
host), path traversal in LoRA/VAE/model names, oversized bodies and uploads, unknown fields, invalid
UTF-8, deeply nested JSON and slow-loris clients.

Every answer must be the expected status with the error envelope, never a 5xx, and the server must
still answer /ready and run a good request afterwards. Prints `FIGURES {...}` (cases, passed, 5xx seen,
failures) and exits non-zero on any failure.

    .venv/bin/python scripts/drill_bad_input.py [--only NAME-SUBSTRING] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from drill_serve import KEY, ROOT, Server, drilled

FLUX = "/run/darkroom/demo-flux-2"
I2V = "/run/darkroom/demo-wan-2.2-5b-i2v"
QUEUE = "/queue/darkroom/demo-flux-2"
HEADERS = {"Authorization": f"Key {KEY}"}
LE, GE = "less than or equal to ", "greater than or equal to "  # pydantic's words for a range
NO_ID = "00000000-0000-4000-8000-000000000000"  # a request id nothing has
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALLOWED_HOST = "127.0.0.2"  # DARKROOM_OUTBOUND_ALLOW_CIDRS names it: the "public" host of this drill
INPUT_MAX_BYTES = 64 * 1024
UPLOAD_MAX_BYTES = 256 * 1024
CLIENT_TIMEOUT_S = 3.0
BODY_MAX_BYTES = 1 << 20
INPUT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Case:
    """One bad request: what to send and what darkroom must answer (status, words in the message)."""

    name: str
    path: str
    status: int
    message: str
    body: Any = None  # sent as JSON unless ``raw`` is given
    raw: bytes | None = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


def png(width: int, height: int, *, rows: bytes | None = None) -> bytes:
    """A PNG of ``width`` x ``height`` grey pixels (``rows``: other pixel data, e.g. too little)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    if rows is None:
        compressor = zlib.compressobj(9)
        line = b"\x00" + b"\x80" * width
        rows = b"".join(compressor.compress(line) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64," + base64.b64encode(data).decode()


def flux(name: str, status: int, message: str, **fields: Any) -> Case:
    return Case(name, FLUX, status, message, {"prompt": "a cube", "num_inference_steps": 1, **fields})


def queue(name: str, message: str, headers: dict[str, str] | None = None, *, query: str = "") -> Case:
    return Case(name, QUEUE + query, 422, message, {"prompt": "x"}, headers=headers or {})


def i2v(name: str, status: int, message: str, image_url: Any) -> Case:
    body = {"prompt": "a cube", "num_inference_steps": 1, "image_url": image_url}
    return Case(name, I2V, status, message, body)


def corpus(origin: str, loopback: str, own: str) -> list[Case]:
    """``origin``: the allowed host's base URL (its routes: /png, /text, /big, /slow, /bomb, /to?url=,
    /loop); ``loopback``: the same server on 127.0.0.1, which darkroom must refuse to reach; ``own``:
    darkroom's base URL (links to its own files)."""
    bomb = png(40000, 40000, rows=zlib.compress(bytes(40001 * 4)))  # claims 1.6 Gpx in ~100 bytes
    port = loopback.rsplit(":", 1)[1]
    to = f"{origin}/to?url="
    refused = "refusing to connect"
    sigmas_60 = [1 - i / 60 for i in range(60)] + [0.0]
    too_big = b'{"prompt": "' + b"x" * (2 * BODY_MAX_BYTES) + b'"}'
    # fmt: off
    return [
        # types and ranges
        flux("prompt missing", 422, "field required") | _drop("prompt"),
        flux("prompt not a string", 422, "valid string", prompt=5),
        flux("prompt empty", 422, "at least 1 character", prompt=""),
        flux("prompt past the CPU cap", 422, "at most 1000 characters", prompt="x" * 1001),
        flux("steps not a number", 422, "valid integer", num_inference_steps="many"),
        flux("steps fractional", 422, "valid integer", num_inference_steps=1.5),
        flux("steps zero", 422, GE + "1", num_inference_steps=0),
        flux("steps past the CPU cap", 422, "cpu demo", num_inference_steps=13),
        flux("steps huge", 422, LE + "12", num_inference_steps=10**12),
        flux("image_size too wide", 422, LE + "512", image_size={"width": 10000, "height": 64}),
        flux("image_size too small", 422, GE + "16", image_size={"width": 8, "height": 64}),
        flux("image_size negative", 422, GE + "16", image_size={"width": -6, "height": 64}),
        flux("image_size unknown preset", 422, "square_hd", image_size="huge_square"),
        flux("image_size unknown key", 422, "extra inputs", image_size={"width": 64, "height": 9, "z": 3}),
        flux("image_size a list", 422, "image_size", image_size=[64, 64]),
        flux("num_images past the CPU cap", 422, LE + "2", num_images=3),
        flux("num_images zero", 422, GE + "1", num_images=0),
        flux("seed negative", 422, GE + "0", seed=-1),
        flux("seed too large", 422, LE.strip(), seed=2**70),
        flux("seed a string", 422, "valid integer", seed="lucky"),
        flux("guidance not a number", 422, "valid number", guidance_scale="strong"),
        flux("output_format unknown", 422, "jpeg", output_format="tiff"),
        flux("sync_mode not a boolean", 422, "valid boolean", sync_mode="maybe"),
        flux("sampler unknown", 422, "euler", sampler="no_such_sampler"),
        flux("scheduler unknown", 422, "simple", scheduler="no_such_scheduler"),
        flux("sigmas ascending", 422, "strictly descend", sigmas=[0.5, 1.0, 0.0]),
        flux("sigmas not ending at 0", 422, "last value must be 0", sigmas=[1.0, 0.5]),
        flux("sigmas past the CPU cap", 422, "at most 13", sigmas=sigmas_60),
        flux("shift out of range", 422, LE + "100", shift=101),
        flux("shift overflowing FLUX's mu", 422, "no finite schedule", shift=93.5, scheduler="sgm_uniform"),
        flux("denoise out of range", 422, LE + "1", denoise=2),
        flux("too many LoRAs", 422, "at most 8", loras=[{"path": "a.safetensors"}] * 9),
        flux("LoRA entry unknown key", 422, "extra inputs", loras=[{"path": "a", "weight": 1}]),
        flux("LoRA scale not a number", 422, "valid number", loras=[{"path": "a", "scale": "big"}]),
        flux("model_blend unknown model", 422, "model", model_blend=[{"model": "nothing", "weight": 1}]),
        # path traversal in names
        flux("LoRA path traversal", 422, "lora", loras=[{"path": "../../../../etc/passwd"}]),
        flux("LoRA absolute path", 422, "lora", loras=[{"path": "/etc/passwd"}]),
        flux("LoRA name too long for a file", 422, "255 at most", loras=[{"path": "0" * 2048}]),
        flux("LoRA file URL", 422, "https", loras=[{"path": "file:///etc/passwd"}]),
        flux("LoRA hf traversal", 422, "no empty, . or .. parts", loras=[{"path": "hf://../../etc/passwd"}]),
        flux("LoRA to metadata", 422, refused, loras=[{"path": "https://169.254.169.254/x.safetensors"}]),
        flux("VAE traversal", 422, "vae", vae="../../../../etc/passwd"),
        flux("VAE absolute path", 422, "vae", vae="/etc/passwd"),
        flux("VAE unknown", 422, "vae", vae="no-such-vae.safetensors"),
        flux("model_blend traversal", 422, "model", model_blend=[{"model": "../../etc/passwd", "weight": 1}]),
        # bodies
        Case("body not UTF-8", FLUX, 422, "not utf-8", raw=b'{"prompt": "\xff\xfe"}'),
        Case("body not JSON", FLUX, 422, "not valid json", raw=b"1\x1e+{"),
        Case("body a JSON array", FLUX, 422, "valid dictionary", body=[1, 2]),
        Case("body a JSON string", FLUX, 422, "valid dictionary", body="a cube"),
        Case("body NaN", FLUX, 422, "nan is not a json value", raw=b'{"prompt": "x", "guidance_scale": NaN}'),
        Case("body Infinity", FLUX, 422, "out of a number's range", raw=b'{"prompt": "x", "shift": 1e999}'),
        Case("body nested 100000 deep", FLUX, 422, "nested", raw=b"[" * 100000 + b"]" * 100000),
        Case("body nested objects", FLUX, 422, "nested", raw=b'{"a":' * 5000 + b"1" + b"}" * 5000),
        Case("body over the size limit", FLUX, 413, "darkroom_body_max_bytes", raw=too_big),
        Case("queue body not JSON", QUEUE, 422, "not valid json", raw=b"{"),
        queue("queue timeout header not a number", "x-fal-request-timeout", {"X-Fal-Request-Timeout": "now"}),
        queue("queue timeout header negative", "x-fal-request-timeout", {"X-Fal-Request-Timeout": "-5"}),
        Case("run timeout header not finite", FLUX, 422, "x-fal-request-timeout", {"prompt": "x"},
             headers={"X-Fal-Request-Timeout": "inf"}),
        queue("queue priority unknown", "normal or low", {"X-Fal-Queue-Priority": "urgent"}),
        queue("queue webhook to loopback", refused, query="?fal_webhook=http://127.0.0.1:9/hook"),
        queue("queue webhook not a URL", "url", query="?fal_webhook=hook"),
        Case("queue unknown app", "/queue/nobody/nothing", 404, "nobody/nothing", body={"prompt": "x"}),
        Case("status of an unknown request", QUEUE + f"/requests/{NO_ID}/status",
             404, "not found", method="GET"),
        Case("upload initiate not JSON", "/storage/upload/initiate", 422, "not valid json", raw=b"{"),
        Case("upload initiate name not a string", "/storage/upload/initiate", 422, "valid string",
             body={"file_name": 5}),
        # image inputs
        i2v("image_url missing", 422, "field required", None) | _drop("image_url"),
        i2v("image_url null", 422, "valid string", None),
        i2v("image_url not a URL", 422, "expected an https:// url", "a picture of a cat"),
        i2v("image_url ftp", 422, "https", "ftp://example.com/cat.png"),
        i2v("image_url file", 422, "https", "file:///etc/passwd"),
        i2v("data URI bad base64", 422, "base64", "data:image/png;base64,@@@@"),
        i2v("data URI not an image", 422, "not an image", data_uri(b"hello, world " * 10)),
        i2v("data URI declared but truncated PNG", 422, "image", data_uri(png(8, 8)[:40])),
        i2v("data URI over the input limit", 422, "too large", data_uri(PNG_MAGIC + bytes(INPUT_MAX_BYTES))),
        i2v("data URI decompression bomb", 422, "darkroom_input_max_pixels", data_uri(bomb)),
        i2v("own file link traversal", 404, "names no file", f"{own}/files/../../etc/passwd"),
        i2v("own file unknown", 404, "names no file", f"{own}/files/{NO_ID}/x.png"),
        i2v("own upload unknown", 404, "names no file", f"{own}/files/uploads/{'0' * 32}/cat.png"),
        # SSRF: straight, and by a redirect from the allowed host
        i2v("loopback", 422, refused, f"{loopback}/png"),
        i2v("localhost", 422, refused, f"http://localhost:{port}/png"),
        i2v("loopback IPv6", 422, refused, f"http://[::1]:{port}/png"),
        i2v("loopback decimal", 422, "2130706433", f"http://2130706433:{port}/png"),
        i2v("unspecified address", 422, refused, f"http://0.0.0.0:{port}/png"),
        i2v("private address", 422, refused, "http://10.0.0.1/png"),
        i2v("metadata address", 422, refused, "http://169.254.169.254/latest/meta-data/"),
        i2v("IPv4-mapped loopback", 422, refused, f"http://[::ffff:127.0.0.1]:{port}/png"),
        i2v("redirect to loopback", 422, refused, to + f"{loopback}/png"),
        i2v("redirect to localhost", 422, refused, to + f"http://localhost:{port}/png"),
        i2v("redirect to private", 422, refused, to + "http://10.1.2.3/png"),
        i2v("redirect to metadata", 422, refused, to + "http://169.254.169.254/latest/meta-data/"),
        i2v("redirect to IPv6 loopback", 422, refused, to + f"http://[::1]:{port}/png"),
        i2v("redirect to a file URL", 422, "https", to + "file:///etc/passwd"),
        i2v("redirect loop", 422, "redirect", f"{origin}/loop"),
        i2v("allowed host, not an image", 422, "not an image", f"{origin}/text"),
        i2v("allowed host, too large", 422, "too large", f"{origin}/big"),
        i2v("allowed host, too slow", 422, "took longer than", f"{origin}/slow"),
        i2v("allowed host, decompression bomb", 422, "darkroom_input_max_pixels", f"{origin}/bomb"),
        # URLs the one parser cannot parse: a 422 naming the field, at submit (issue 21)
        i2v("image_url backslash in the authority", 422, "backslash", "https://evil.invalid\\@127.0.0.1/a.png"),
        i2v("image_url unclosed IPv6 bracket", 422, "ipv6", "https://[::1/a.png"),
        i2v("image_url port past 65535", 422, "port out of range", "https://h:99999/a.png"),
        i2v("image_url host %-encoded", 422, "not a host name", "https://ex%41mple.com/a.png"),
        i2v("image_url NUL in the host", 422, "control characters", "https://a\x00b.example/a.png"),
        Case("queue image_url unparseable", I2V.replace("/run/", "/queue/"), 422, "ipv6",
             {"prompt": "x", "image_url": "https://[::1/a.png"}),
        flux("LoRA URL unparseable", 422, "port out of range", loras=[{"path": "https://h:99999/x.safetensors"}]),
        queue("queue webhook unparseable", "ipv6", query="?fal_webhook=https://[::1/hook"),
        queue("queue webhook port past 65535", "port out of range", query="?fal_webhook=https://h:99999/"),
        i2v("redirect to an unparseable Location", 422, "cannot be fetched", f"{origin}/raw?to=https://[::1/a.png"),
        i2v("redirect to a port past 65535", 422, "port out of range", f"{origin}/raw?to=https://h:99999/a.png"),
        # names a filesystem refuses, before any filesystem call
        flux("LoRA name with NUL", 422, "nul", loras=[{"path": "tiny/x.safetensors\u0000.txt"}]),
        flux("VAE name with a newline", 422, "control characters", vae="a\n" + FORGED),
        flux("VAE name part too long", 422, "bytes", vae="v" * 300),
        flux("model_blend name with NUL", 422, "nul", model_blend=[{"model": "a\u0000b", "weight": 1}]),
        # images decoded completely before any GPU work
        i2v("data URI PNG cut after its header", 422, "not a complete image", data_uri(png(64, 64)[:-40])),
        # a key where it does not belong, and two of them
        Case("key in the query string", FLUX + f"?key={KEY}", 401, "missing api key", {"prompt": "x"},
             headers={"Authorization": ""}),
        Case("token-like query values", f"/workflows?token={KEY}&auth={KEY}&fal_jwt_token={KEY}", 200, "",
             method="GET"),
    ]
    # fmt: on


class _drop:
    """``case | _drop(key)``: the case without that body key (a field left out, not null)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __ror__(self, case: Case) -> Case:
        return Case(case.name, case.path, case.status, case.message,
                    {k: v for k, v in case.body.items() if k != self.key})  # fmt: skip


def message_of(text: str) -> str:
    """The words of an error body: its detail (a string, or the list's msg/loc), lower-cased."""
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        return text.lower()
    if isinstance(detail, list):
        return " ".join(f"{d.get('loc')} {d.get('msg')}" for d in detail if isinstance(d, dict)).lower()
    return str(detail).lower()


@contextlib.asynccontextmanager
async def origin_server() -> AsyncIterator[int]:
    """The drill's "public" host, on ALLOWED_HOST and 127.0.0.1 (same port): good and bad files, redirects."""

    async def good(_: web.Request) -> web.Response:
        return web.Response(body=png(16, 16), content_type="image/png")

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="image/png")

    async def big(_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(_)
        await response.write(b"\x89PNG\r\n\x1a\n")
        for _i in range(4 * INPUT_MAX_BYTES // 4096):
            await response.write(bytes(4096))
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # darkroom gives up first
            for byte in png(16, 16):
                await response.write(bytes([byte]))
                await asyncio.sleep(0.2)
        return response

    async def bomb(_: web.Request) -> web.Response:
        return web.Response(
            body=png(40000, 40000, rows=zlib.compress(bytes(40001 * 4))), content_type="image/png"
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["url"])

    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def raw(request: web.Request) -> web.Response:  # a Location as sent, unparsed
        return web.Response(status=302, headers={"Location": request.query["to"]})

    app = web.Application()
    app.router.add_routes([web.get("/png", good), web.get("/text", text), web.get("/big", big),
                           web.get("/slow", slow), web.get("/bomb", bomb), web.get("/to", redirect),
                           web.get("/loop", loop), web.get("/raw", raw)])  # fmt: skip
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    probe = web.TCPSite(runner, ALLOWED_HOST, 0)
    await probe.start()
    port = probe._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def send(http: aiohttp.ClientSession, base: str, case: Case) -> tuple[int, str]:
    data = case.raw if case.raw is not None else json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json", **case.headers}
    async with http.request(case.method, base + case.path, data=None if case.method == "GET" else data,
                            headers=headers) as response:  # fmt: skip
        return response.status, await response.text()


async def uploads(http: aiohttp.ClientSession, base: str) -> list[tuple[str, bool, str]]:
    """Uploads: a traversal file name is made safe (not refused: the SDKs send what the user named), a
    body past upload_max_bytes is refused with 413, a used upload URL with 404. (name, ok, what came)."""
    found = []
    initiate = {"file_name": "../../../etc/passwd", "content_type": "image/png"}
    async with http.post(base + "/storage/upload/initiate", json=initiate) as response:
        urls = await response.json()
    upload_url = str(urls.get("upload_url", ""))
    path = upload_url.split("/files/uploads/", 1)[-1]
    safe = response.status == 200 and ".." not in path and path.count("/") == 1
    found.append(("upload traversal name made safe", safe, f"{response.status} {upload_url}"))
    async with http.put(upload_url, data=bytes(UPLOAD_MAX_BYTES + 1)) as response:
        words = message_of(await response.text())
    found.append(("upload past the limit", response.status == 413 and "darkroom_upload_max_bytes" in words,
                  f"{response.status} {words[:200]}"))  # fmt: skip
    async with http.post(base + "/storage/upload/initiate", json={"file_name": "a.png"}) as response:
        upload_url = (await response.json())["upload_url"]
    async with http.put(upload_url, data=png(16, 16)) as response:
        first = response.status
    async with http.put(upload_url, data=png(16, 16)) as response:
        words = message_of(await response.text())
    found.append(
        ("upload URL used twice", first == 200 and response.status == 404, f"{response.status} {words}")
    )
    return found


HTML = b"<!doctype html><script>fetch('/tokens/', {method: 'POST'})</script>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/tokens/")</script></svg>'
FORGED = "2026-01-01 00:00:00 INFO    server.app: FORGED"  # a log line a request must never write


async def hostile(http: aiohttp.ClientSession, server: Server) -> list[tuple[str, bool, str]]:
    """Issue 21's classes that are not one request and one answer: uploaded pages served back, /ws
    messages past the body's limits, headers aiohttp's parser refuses, /ready to a stranger."""
    found = [await _served_back(http, server.base, *upload) for upload in (
        ("initiate", "x.html", HTML, "text/html"), ("cdn", "y.html", HTML, "text/html"),
        ("initiate", "z.svg", SVG, "image/svg+xml"), ("cdn", "p.png", HTML, "image/png"),
    )]  # fmt: skip
    found += await _ws_limits(http, server.base)
    for name, header, words in [
        (
            "Authorization with a control character",
            f"Authorization: Key {KEY}\x01x",
            "malformed http request",
        ),
        ("Authorization obs-fold", f"Authorization: Key {KEY}\r\n x", "malformed http request"),
        ("two Authorization headers", f"Authorization: Key {KEY}\r\nAuthorization: Key other", "exactly one"),
        ("a newline in the path", f"Authorization: Key {KEY}", "not found"),
    ]:
        # darkroom logs a refused request's path (decoded): a newline there must not start a log line
        forged = FORGED.replace(" ", "%20")
        target = f"/queue/darkroom/x%0A{forged}/requests/{NO_ID}/status" if "path" in name else "/workflows"
        status, body = await raw_request(server.port, target, header)
        ok = status in (400, 404) and words in message_of(body) and KEY not in body and body.startswith("{")
        found.append((name, ok, f"{status} {body[:200]}"))
    async with aiohttp.ClientSession() as stranger, stranger.get(server.base + "/ready") as ready:
        body = await ready.text()
        found.append(
            ("/ready without a key", json.loads(body) == {"status": "ready"}, f"{ready.status} {body}")
        )
    return found


async def _served_back(
    http: aiohttp.ClientSession, base: str, route: str, name: str, data: bytes, content_type: str
) -> tuple[str, bool, str]:
    """An uploaded page or SVG, served back: an attachment typed by its bytes, nosniff, no script."""
    if route == "initiate":
        body = {"file_name": name, "content_type": content_type}
        async with http.post(base + "/storage/upload/initiate", json=body) as response:
            url = (await response.json())["upload_url"]
        async with http.put(url, data=data, headers={"Content-Type": content_type}) as response:
            assert response.status == 200, await response.text()
    else:
        headers = {"Content-Type": content_type, "X-Fal-File-Name": name}
        async with http.post(base + "/files/upload", data=data, headers=headers) as response:
            url = (await response.json())["access_url"]
    async with aiohttp.ClientSession() as browser, browser.get(url) as served:
        h = served.headers
        ok = (served.status == 200 and h.get("Content-Type") == "application/octet-stream"
              and h.get("Content-Disposition", "").startswith("attachment;")
              and h.get("X-Content-Type-Options") == "nosniff"
              and h.get("Content-Security-Policy") == "default-src 'none'; sandbox")  # fmt: skip
        return f"uploaded {name} ({route}) served back", ok, f"{served.status} {dict(h)}"


async def _ws_limits(http: aiohttp.ClientSession, base: str) -> list[tuple[str, bool, str]]:
    found = []
    subscribe = '{"action": "subscribe", "request_ids": '
    async with http.ws_connect(base.replace("http", "ws", 1) + "/ws") as ws:
        for name, text in [
            ("/ws request_ids nested 5000 deep", subscribe + "[" * 5000 + "]" * 5000 + "}"),
            ("/ws a 5000-digit integer", subscribe + "[" + "9" * 5000 + "]}"),
            ("/ws NaN", subscribe + "[NaN]}"),
            ("/ws webhook_url unparseable", json.dumps({"action": "submit", "app_id": FLUX[5:],
                                                       "input": {"prompt": "x"}, "webhook_url": "https://[::1/"})),
        ]:  # fmt: skip
            await ws.send_str(text)
            answer = await ws.receive_json(timeout=10)
            ok = answer.get("type") == "error" and answer.get("status_code") in (400, 422)
            found.append((name, ok, f"ws {answer}"))
        await ws.send_str(json.dumps({"action": "subscribe", "request_ids": [NO_ID], "ref": 1}))
        answer = await ws.receive_json(timeout=10)
        found.append(("/ws still usable afterwards", answer.get("status_code") == 404, f"ws {answer}"))
        await ws.send_str(json.dumps({"action": "subscribe", "request_ids": ["x" * (BODY_MAX_BYTES + 1)]}))
        await ws.receive(timeout=10)
        found.append(("/ws message past the body limit", ws.close_code == 1009, f"ws close {ws.close_code}"))
    return found


async def raw_request(port: int, target: str, header: str) -> tuple[int, str]:
    """A GET with one hand-written header block (what aiohttp's client refuses to send): status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    return (int(status) if status.isdigit() else 0), body.decode(errors="replace")


async def slow_loris(port: int, *, headers_only: bool) -> tuple[int | None, float]:
    """A client that drips its request a byte a second: the status darkroom answers (None: it just closed
    the connection) and the seconds until it did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {FLUX} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Key {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()  # fmt: skip
    started = time.monotonic()
    answer = b""
    try:
        if headers_only:
            drip, rest = head, b""
        else:
            writer.write(head)
            drip, rest = b'{"prompt": "' + b"x" * 1000, b""
        for byte in drip + rest:
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(4096), timeout=1.0)
                if answer or reader.at_eof():
                    break
            if time.monotonic() - started > 60:
                break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    line = answer.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 and line[1].isdigit() else None), round(
        time.monotonic() - started, 1
    )


async def drill(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"failures": []}
    seen: Counter[int] = Counter()
    async with origin_server() as port, aiohttp.ClientSession(headers=HEADERS) as http:
        cases = [c for c in corpus(f"http://{ALLOWED_HOST}:{port}", f"http://127.0.0.1:{port}", server.base)
                 if args.only.lower() in c.name.lower()]  # fmt: skip
        for case in cases:
            try:
                status, text = await asyncio.wait_for(send(http, server.base, case), timeout=60)
            except (TimeoutError, aiohttp.ClientError) as e:
                status, text = 0, f"{type(e).__name__}: {e}"
            seen[status] += 1
            words = message_of(text)
            ok = status == case.status and case.message.lower() in words
            if args.verbose or not ok:
                print(f"{'ok  ' if ok else 'FAIL'} {case.name}: {status} {words[:300]}", flush=True)
            if not ok:
                figures["cases_failed"] = figures.get("cases_failed", 0) + 1
                figures["failures"].append(f"{case.name}: expected {case.status} with {case.message!r}, "
                                           f"got {status} {words[:200]}")  # fmt: skip
        extra = await uploads(http, server.base) if args.only.lower() in "upload" else []
        extra += await hostile(http, server) if args.only.lower() in "hostile" else []
        for name, ok, got in extra:
            if (first := got.split(" ", 1)[0]).isdigit():  # an HTTP status (the /ws checks have none)
                seen[int(first)] += 1
            figures["cases_tried"] = figures.get("cases_tried", 0) + 1
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {got[:300]}", flush=True)
            if not ok:
                figures["cases_failed"] = figures.get("cases_failed", 0) + 1
                figures["failures"].append(f"{name}: got {got[:200]}")
        for headers_only in (False, True):
            what = "slow-loris headers" if headers_only else "slow-loris body"
            if args.only.lower() not in what:
                continue
            answer, seconds = await slow_loris(server.port, headers_only=headers_only)
            figures[what.replace(" ", "_").replace("-", "_") + "_s"] = seconds
            print(f"{what}: answered {answer} after {seconds} s", flush=True)
            if seconds > 2 * CLIENT_TIMEOUT_S + 2 or (not headers_only and answer != 408):
                figures["failures"].append(f"{what}: answered {answer}, the connection held {seconds} s")
        async with http.get(server.base + "/ready") as ready:
            figures["ready_after"] = ready.status
        good = {"prompt": "still fine", "num_inference_steps": 1, "image_size": {"width": 16, "height": 16}}
        async with http.post(server.base + FLUX, json=good) as after:
            figures["good_run_after"] = after.status
    figures.update(
        cases=len(cases) + figures.pop("cases_tried", 0),
        statuses={str(k): v for k, v in sorted(seen.items())},
        server_errors=sum(v for k, v in seen.items() if k >= 500),
    )
    if figures["ready_after"] != 200 or figures["good_run_after"] != 200:
        figures["failures"].append(
            f"after the corpus: /ready {figures['ready_after']}, run {figures['good_run_after']}"
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--verbose", action="store_true", help="print every case, not just failures")
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    args = parser.parse_args()
    env = {
        "DARKROOM_INPUTS_ALLOW_HTTP": "true", "DARKROOM_OUTBOUND_ALLOW_CIDRS": f"{ALLOWED_HOST}/32",
        "DARKROOM_INPUT_MAX_BYTES": str(INPUT_MAX_BYTES), "DARKROOM_UPLOAD_MAX_BYTES": str(UPLOAD_MAX_BYTES),
        "DARKROOM_INPUT_TIMEOUT_S": str(INPUT_TIMEOUT_S), "DARKROOM_CLIENT_TIMEOUT_S": str(CLIENT_TIMEOUT_S),
        "DARKROOM_BODY_MAX_BYTES": str(BODY_MAX_BYTES),
    }  # fmt: skip
    figures = drilled("bad-input", Path(args.models_dir), env, lambda server: drill(server, args))
    figures["passed"] = figures["cases"] - figures.get("cases_failed", 0)
    print("FIGURES " + json.dumps(figures), flush=True)
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
