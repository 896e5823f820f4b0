"""fal's own Python SDK, unmodified, against `darkroom serve` over TLS (a real subprocess, real ComfyUI).

The SDK runs in a subprocess pointed at us the way fal-api.md section 1 describes: FAL_RUN_HOST and
FAL_QUEUE_RUN_HOST with a path prefix, SSL_CERT_FILE naming our self-signed certificate, and the
module globals REST_URL / CDN_URL (uploads) patched to our root. Nothing leaves 127.0.0.1.
Queue tests run once the /queue routes are registered; until then they are skipped, saying why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from served import KEY, Server, check_image, run_sdk, serve_darkroom

from server.app import create_app
from server.settings import PROJECT_ROOT, load_settings
from tests.fakes import IdleSupervisor

pytestmark = [pytest.mark.stack]

APP = "darkroom/demo-flux-2"


def _registered_routes() -> set[str]:
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(
            load_settings({}, data_dir=data_dir), IdleSupervisor(ready=False), run_supervisor=False
        )  # type: ignore[arg-type]
        return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


ROUTES = _registered_routes()
needs_queue = pytest.mark.skipif(
    not any(path.startswith("/queue/") for path in ROUTES),
    reason="no /queue routes are registered yet (server/api/queue.py); these SDK calls run once they are",
)
needs_stream = pytest.mark.skipif(
    not any(path.startswith("/run/") and path.endswith("/stream") for path in ROUTES),
    reason="POST /run/{app}/stream is not registered yet; fal_client.stream runs once it is",
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path, comfyui_dir: Path
) -> Iterator[Server]:
    yield from serve_darkroom(tmp_path_factory.mktemp("fal-client"), tiny_models_dir, comfyui_dir)


def test_run(server: Server) -> None:
    result = run_sdk(
        server,
        """
        arguments = {"prompt": "a red cube", "seed": 3, "image_size": {"width": 64, "height": 48}}
        emit(fal_client.run("darkroom/demo-flux-2", arguments=arguments))
        """,
    )
    assert result["seed"] == 3 and result["prompt"] == "a red cube"
    (image,) = result["images"]
    assert image["url"].startswith(f"https://127.0.0.1:{server.port}/files/")
    check_image(server, image, (64, 48))


def test_errors_surface_as_sdk_exceptions_with_our_detail(server: Server) -> None:
    errors = run_sdk(
        server,
        """
        emit({
            "invalid": http_error(lambda: fal_client.run(
                "darkroom/demo-flux-2", arguments={"prompt": "x", "num_inference_steps": 500}
            )),
            "unknown": http_error(lambda: fal_client.run("darkroom/no-such-app", arguments={"prompt": "x"})),
        })
        """,
    )
    invalid, unknown = errors["invalid"], errors["unknown"]
    assert invalid["status"] == 422 and invalid["error_type"] == "validation_error"
    assert invalid["detail"][0]["loc"] == ["body", "num_inference_steps"] and invalid["request_id"]
    assert unknown["status"] == 404 and "darkroom/demo-flux-2" in unknown["detail"]
    assert unknown["error_type"] == "not_found"


def test_a_wrong_key_is_401(server: Server) -> None:
    error = run_sdk(
        server,
        'emit(http_error(lambda: fal_client.run("darkroom/demo-flux-2", arguments={"prompt": "x"})))',
        key="not-a-key",
    )
    assert error["status"] == 401 and error["error_type"] == "unauthorized" and "API key" in error["detail"]


def test_upload(server: Server, tmp_path: Path) -> None:
    picture = tmp_path / "tiny.png"
    Image.new("RGB", (5, 4), (1, 2, 3)).save(picture)
    urls = run_sdk(
        server,
        f"""
        emit({{
            "v3": fal_client.upload(b"hello darkroom", "text/plain"),
            "file": fal_client.upload_file({str(picture)!r}),
            "initiate": fal_client.upload(b"via initiate", "text/plain", repository="fal"),
        }})
        """,
    )
    status, data, content_type = server.get(urls["v3"])
    # Text is no media type its bytes show: an attachment, typed as bytes (a page could not run).
    assert (status, data) == (200, b"hello darkroom") and content_type == "application/octet-stream"
    status, data, content_type = server.get(urls["file"])
    assert status == 200 and content_type == "image/png" and urls["file"].endswith("/tiny.png")
    assert data == picture.read_bytes()
    assert server.get(urls["initiate"])[:2] == (200, b"via initiate")


def test_edit_and_z_image_with_uploaded_images(server: Server, tmp_path: Path) -> None:
    """fal-ai/flux-2/edit's twin with two images the SDK uploaded: the output takes the first's size;
    fal-ai/z-image/turbo's twin, and its image-to-image twin from the first upload (its size again)."""
    first, second = tmp_path / "wide.png", tmp_path / "square.png"
    Image.effect_noise((80, 48), 30).convert("RGB").save(first)
    Image.effect_noise((64, 64), 50).convert("RGB").save(second)
    result = run_sdk(
        server,
        f"""
        urls = [fal_client.upload_file({str(first)!r}), fal_client.upload_file({str(second)!r})]
        arguments = {{"prompt": "make it blue", "seed": 2, "image_urls": urls}}
        edit = fal_client.run("darkroom/demo-flux-2-edit", arguments=arguments)
        z = {{"prompt": "a fox", "seed": 3, "num_inference_steps": 2}}
        size = {{"width": 48, "height": 64}}
        turbo = fal_client.run("darkroom/demo-z-image-turbo", arguments={{**z, "image_size": size}})
        i2i = fal_client.run("darkroom/demo-z-image-turbo-i2i", arguments={{**z, "image_url": urls[0]}})
        emit({{"edit": edit, "turbo": turbo, "i2i": i2i}})
        """,
    )
    assert result["edit"]["seed"] == 2
    check_image(server, result["edit"]["images"][0], (80, 48))
    assert result["turbo"]["seed"] == result["i2i"]["seed"] == 3
    check_image(server, result["turbo"]["images"][0], (48, 64))
    check_image(server, result["i2i"]["images"][0], (80, 48))


def write_random(path: Path, size_bytes: int) -> str:
    """Fill ``path`` with ``size_bytes`` random bytes, 1 MiB at a time; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size_bytes, 1 << 20):
            block = os.urandom(min(1 << 20, size_bytes - start))
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def test_upload_over_the_multipart_threshold(server: Server, tmp_path: Path) -> None:
    """fal_client's own MULTIPART_THRESHOLD (100 MiB, not patched): a file just over it goes in
    10 MiB parts, from disk and from memory; the returned URLs serve the exact bytes."""
    big = tmp_path / "lora.safetensors"
    size_bytes = 100 * 1024 * 1024 + 4099
    sha256 = write_random(big, size_bytes)
    urls = run_sdk(
        server,
        f"""
        import os
        assert os.path.getsize({str(big)!r}) > fal_module.MULTIPART_THRESHOLD
        with open({str(big)!r}, "rb") as f:
            data = f.read()
        emit({{
            "file": fal_client.upload_file({str(big)!r}),
            "bytes": fal_client.upload(data, "application/octet-stream", "from-memory.bin"),
        }})
        """,
    )
    assert urls["file"].endswith("/lora.safetensors") and urls["bytes"].endswith("/from-memory.bin")
    for url in urls.values():
        status, data, _ = server.get(url)
        assert status == 200 and len(data) == size_bytes and hashlib.sha256(data).hexdigest() == sha256
    assert server.log.read_text(errors="replace").count(f"11 parts, {size_bytes} bytes") == 2


@needs_stream
def test_stream(server: Server) -> None:
    events = run_sdk(
        server,
        """
        arguments = {"prompt": "a cube", "seed": 4, "image_size": {"width": 64, "height": 64}}
        emit(list(fal_client.stream("darkroom/demo-flux-2", arguments=arguments)))
        """,
    )
    assert len(events) >= 2, "progress events, then the output"
    final = events[-1]
    assert final["seed"] == 4
    check_image(server, final["images"][0], (64, 64))


@needs_queue
def test_submit_status_result(server: Server) -> None:
    outcome = run_sdk(
        server,
        """
        handle = fal_client.submit("darkroom/demo-flux-2", arguments={"prompt": "q", "seed": 5})
        first = handle.status()
        result = handle.get()
        again = fal_client.status("darkroom/demo-flux-2", handle.request_id, with_logs=True)
        emit({"request_id": handle.request_id, "first": type(first).__name__,
              "final": type(again).__name__, "logs": again.logs,
              "result": result, "by_id": fal_client.result("darkroom/demo-flux-2", handle.request_id)})
        """,
    )
    assert outcome["first"] in ("Queued", "InProgress", "Completed") and outcome["final"] == "Completed"
    assert isinstance(outcome["logs"], list)
    assert outcome["result"] == outcome["by_id"] and outcome["result"]["seed"] == 5
    check_image(server, outcome["result"]["images"][0], (64, 64))


@needs_queue
def test_subscribe_with_logs(server: Server) -> None:
    outcome = run_sdk(
        server,
        """
        updates = []
        result = fal_client.subscribe(
            "darkroom/demo-flux-2", arguments={"prompt": "s", "seed": 6}, with_logs=True,
            on_queue_update=lambda update: updates.append(type(update).__name__),
        )
        emit({"updates": updates, "result": result})
        """,
    )
    assert outcome["updates"] and outcome["updates"][-1] == "Completed"
    assert outcome["result"]["seed"] == 6


@needs_queue
def test_train_then_generate_with_the_returned_lora(server: Server, tmp_path: Path) -> None:
    """fal's train-then-serve loop, unmodified: upload_file(zip), subscribe to the trainer with logs, then
    the /lora demo twin with the returned diffusers_lora_file URL (loaded from darkroom's LoRA folder)."""
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for index, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
            data = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(data, format="PNG")
            zf.writestr(f"{index}.png", data.getvalue())
    outcome = run_sdk(
        server,
        f"""
        logs = []
        def seen(update):
            logs.extend(entry["message"] for entry in getattr(update, "logs", None) or [])
        url = fal_client.upload_file({str(archive)!r})
        trained = fal_client.subscribe(
            "darkroom/demo-flux-2-trainer", with_logs=True, on_queue_update=seen,
            arguments={{"image_data_url": url, "steps": 2, "seed": 1, "default_caption": "a square"}},
        )
        lora = trained["diffusers_lora_file"]["url"]
        image = fal_client.subscribe("darkroom/demo-flux-2", arguments={{
            "prompt": "a square", "seed": 2, "image_size": {{"width": 32, "height": 32}},
            "loras": [{{"path": lora, "scale": 1.0}}],
        }})
        emit({{"trained": trained, "logs": logs, "image": image}})
        """,
        timeout_s=300,
    )
    trained = outcome["trained"]
    assert trained["diffusers_lora_file"]["url"].startswith(f"https://127.0.0.1:{server.port}/files/")
    assert trained["config_file"]["content_type"] == "application/json"
    assert any(line.startswith("Training: step 2 of 2") for line in outcome["logs"]), outcome["logs"]
    # served from the LoRA folder: a download of that loopback URL would be refused by the address policy
    check_image(server, outcome["image"]["images"][0], (32, 32))


# The most a CPU demo allows (about 3 s here): still running when the cancels arrive.
SLOW = {"prompt": "slow", "seed": 1, "image_size": {"width": 512, "height": 512}, "num_inference_steps": 12,
        "num_images": 2}  # fmt: skip


@needs_queue
def test_cancel_queued_and_running(server: Server) -> None:
    outcome = run_sdk(
        server,
        f"""
        import time
        slow = {SLOW!r}
        running = fal_client.submit("darkroom/demo-flux-2", arguments=slow)
        queued = fal_client.submit("darkroom/demo-flux-2", arguments=slow)
        deadline = time.monotonic() + 60
        while not isinstance(running.status(), fal_client.InProgress):
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.1)
        queued_state = type(queued.status()).__name__
        queued.cancel()
        running.cancel()
        emit({{"queued_state": queued_state,
               "queued": http_error(queued.get), "running": http_error(running.get)}})
        """,
    )
    assert outcome["queued_state"] == "Queued"
    for which in ("queued", "running"):
        error = outcome[which]
        assert error["status"] >= 400 and "cancel" in json.dumps(error["detail"]).lower(), (which, error)


# fal's JS client (@fal-ai/client from npm, pinned in tests/e2e/js/package-lock.json), run with node.
JS_DIR = PROJECT_ROOT / "tests" / "e2e" / "js"
needs_js = pytest.mark.skipif(
    shutil.which("node") is None or not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir(),
    reason="needs node and `npm ci --prefix tests/e2e/js` (make test-setup does it when npm is present)",
)


def run_js(server: Server, scenario: str, *args: str, timeout_s: float = 180.0) -> Any:
    env = {
        k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("FAL_")
    }
    env.update(FAL_KEY=KEY, NODE_EXTRA_CA_CERTS=str(server.cert), NO_PROXY="127.0.0.1,localhost")
    done = subprocess.run(
        ["node", str(JS_DIR / "sdk_check.mjs"), server.base, scenario, *args],
        env=env, cwd=JS_DIR, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    results = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise AssertionError(f"node {scenario} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(results[-1])


@needs_js
def test_js_run_errors_and_upload(server: Server) -> None:
    result = run_js(server, "run")
    assert result["requestId"] and result["data"]["seed"] == 8
    check_image(server, result["data"]["images"][0], (48, 64))
    errors = run_js(server, "errors")
    assert errors["invalid"]["kind"] == "ValidationError" and errors["invalid"]["status"] == 422
    assert errors["invalid"]["body"]["detail"][0]["loc"] == ["body", "num_inference_steps"]
    assert (
        errors["unknown"]["status"] == 404 and "darkroom/demo-flux-2" in errors["unknown"]["body"]["detail"]
    )
    uploaded = run_js(server, "upload")["url"]
    assert server.get(uploaded)[:2] == (200, b"hello from js")


@needs_js
def test_js_edit_and_z_image_with_an_uploaded_image(server: Server, tmp_path: Path) -> None:
    picture = tmp_path / "tall.png"
    Image.effect_noise((48, 80), 40).convert("RGB").save(picture)
    result = run_js(server, "edit", str(picture))
    assert result["data"]["seed"] == 4
    check_image(server, result["data"]["images"][0], (48, 80))
    z_image = result["zImage"]  # fal-ai/z-image/turbo's twins: text-to-image, and from the upload
    assert z_image["turbo"]["seed"] == z_image["i2i"]["seed"] == 6
    check_image(server, z_image["turbo"]["images"][0], (64, 48))
    check_image(server, z_image["i2i"]["images"][0], (48, 80))


@needs_js
def test_js_upload_over_the_multipart_threshold(server: Server) -> None:
    uploaded = run_js(server, "uploadBig")  # over the client's own 90 MB threshold, not patched
    status, data, _ = server.get(uploaded["url"])
    assert status == 200 and len(data) == uploaded["size"]
    assert hashlib.sha256(data).hexdigest() == uploaded["sha256"]
    assert f"10 parts, {uploaded['size']} bytes" in server.log.read_text(errors="replace")


@needs_js
@needs_queue
def test_js_subscribe(server: Server) -> None:
    result = run_js(server, "subscribe")
    assert result["data"]["seed"] == 9 and result["requestId"]
    assert result["updates"] and result["updates"][-1] == "COMPLETED"


@needs_js
@needs_stream
def test_js_stream(server: Server) -> None:
    result = run_js(server, "stream")
    assert result["events"] and result["done"]["seed"] == 10
    check_image(server, result["done"]["images"][0], (64, 64))
