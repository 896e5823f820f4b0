"""`darkroom serve` as a real subprocess over TLS with an API key, and fal's unmodified Python SDK run
against it in a fresh interpreter (shared by the SDK and browser tests; import as `served`)."""

from __future__ import annotations

import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.serve_process import ServeProcess

KEY = "e2e-key-id:e2e-key-secret"
READY_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Server:
    port: int
    cert: Path
    log: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def get(self, url: str) -> tuple[int, bytes, str]:
        """GET over https trusting only our certificate: (status, body, content type)."""
        assert url.startswith(self.base + "/"), f"expected a URL on {self.base}, got {url}"
        try:
            with urllib.request.urlopen(url, context=self.ssl_context(), timeout=30) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (openssl CLI; no `cryptography` here)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate", pytrace=False)
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def serve_darkroom(root: Path, tiny_models_dir: Path, comfyui_dir: Path) -> Iterator[Server]:
    """`darkroom serve` with TLS and an API key, one CPU worker, ready; drained afterwards."""
    cert, key = make_certificate(root)
    process = ServeProcess(
        root / "data", tiny_models_dir, comfyui_dir, root / "serve.log",
        env={"DARKROOM_WORKER_START_TIMEOUT_S": "180", "DARKROOM_API_KEYS": KEY, "DARKROOM_PUBLIC_URL": ""},
        args=("--tls-cert", str(cert), "--tls-key", str(key)),
        ssl_context=ssl.create_default_context(cafile=str(cert)),
    )  # fmt: skip
    try:
        process.start()
        yield Server(process.port, cert, process.log_path)
    finally:
        process.stop(timeout_s=60)


PRELUDE = """
import json, sys
import fal_client
import fal_client.client as fal_module
from fal_client.client import FalClientHTTPError

fal_module.REST_URL = fal_module.CDN_URL = sys.argv[1]  # uploads: fal-api.md section 1


def emit(value):
    print("RESULT " + json.dumps(value), flush=True)


def http_error(call):
    try:
        call()
    except FalClientHTTPError as e:
        return {"status": e.status_code, "detail": e.message, "error_type": e.error_type,
                "request_id": e.response_headers.get("x-fal-request-id")}
    raise AssertionError("expected FalClientHTTPError")
"""


def run_sdk(server: Server, code: str, *, key: str = KEY, timeout_s: float = 180.0) -> Any:
    """Run ``code`` with the unmodified SDK in a fresh interpreter; return what it passed to emit()."""
    env = {
        k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("FAL_")
    }
    env.update(
        FAL_KEY=key,
        FAL_RUN_HOST=f"127.0.0.1:{server.port}/run",
        FAL_QUEUE_RUN_HOST=f"127.0.0.1:{server.port}/queue",
        SSL_CERT_FILE=str(server.cert),
        NO_PROXY="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
    )
    script = PRELUDE + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script, server.base],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    results = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise AssertionError(
            f"SDK script failed ({done.returncode}):\n{done.stderr[-4000:]}\n"
            f"--- server log ---\n{_tail(server.log)}"
        )
    return json.loads(results[-1])


def check_image(server: Server, image: dict[str, Any], size: tuple[int, int]) -> None:
    status, data, content_type = server.get(image["url"])
    assert status == 200 and content_type == image["content_type"] == "image/png"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == size == (image["width"], image["height"]) and len(data) == image["file_size"]
