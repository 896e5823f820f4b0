"""fal's realtime API with fal's own Python SDK, unmodified, against `darkroom serve` over TLS.

Reuses test_fal_client.py's server (a real subprocess with one CPU ComfyUI worker) and SDK runner:
FAL_RUN_HOST gives the SDK its wss:// URL, REST_URL (patched there, fal-api.md section 1) its token
call. fal's JS client dials wss://fal.run/ itself; js/realtime_check.mjs wraps the global WebSocket
to rewrite that host, as a DNS entry would.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import warnings

import pytest
from PIL import Image
from test_fal_client import (  # noqa: F401 (server: a fixture)
    APP,
    JS_DIR,
    KEY,
    Server,
    check_image,
    run_sdk,
    server,
)

pytestmark = [pytest.mark.stack]

SESSION = f"""
import contextlib

import fal_client
from fal_client.client import RealtimeError
from websockets.exceptions import InvalidMessage


def session(use_jwt):
    dropped = []  # a connection closed before any HTTP answer, retried once (see DROPPED below)
    with contextlib.ExitStack() as stack:
        try:
            connection = stack.enter_context(fal_client.realtime({APP!r}, use_jwt=use_jwt, max_buffering=4))
        except InvalidMessage as e:
            if not isinstance(e.__cause__, EOFError):
                raise
            dropped.append(str(e.__cause__))
            connection = stack.enter_context(fal_client.realtime({APP!r}, use_jwt=use_jwt, max_buffering=4))
        connection.send({{"prompt": "rt", "seed": 2, "image_size": {{"width": 64, "height": 48}},
                         "request_id": "r-1"}})
        first = connection.recv()
        connection.send({{"prompt": "x", "num_inference_steps": 500, "request_id": "r-bad"}})
        try:
            connection.recv()
            error = None
        except RealtimeError as e:
            error = {{"error": e.error, "reason": e.reason, "payload": e.payload}}
        connection.send({{"prompt": "again", "seed": 3, "image_size": {{"width": 48, "height": 48}},
                         "sync_mode": True}})
        second = connection.recv()
    return {{"first": first, "error": error, "second": second, "dropped": dropped}}
"""
# DROPPED: once in about a dozen clean-clone runs of make test (CI, 2026-12-08, the token case right
# after the server's start, under two xdist workers' load) the SDK's first handshake read end-of-stream
# before any HTTP status line, and the server logged no request. Not reproduced in 9 repeats here, 5 of
# them beside two busy CPU loops; the cause is not found. The session retries that one failure once and
# the test warns, so it stays visible.


@pytest.mark.parametrize("use_jwt", [True, False], ids=["token", "key-header"])
def test_realtime_with_fal_client(server: Server, use_jwt: bool) -> None:  # noqa: F811
    outcome = run_sdk(server, SESSION + f"emit(session({use_jwt}))")
    first, error, second = outcome["first"], outcome["error"], outcome["second"]
    if outcome["dropped"]:  # shown in pytest's warnings summary, not raised (filterwarnings = error)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.warn(f"realtime handshake dropped once, retried: {outcome['dropped']}", stacklevel=1)
    assert first["request_id"] == "r-1" and first["seed"] == 2 and first["prompt"] == "rt"
    check_image(server, first["images"][0], (64, 48))
    assert error is not None and error["error"] == "validation_error"
    assert error["payload"]["request_id"] == "r-bad"
    assert error["payload"]["detail"][0]["loc"] == ["body", "num_inference_steps"]
    (image,) = second["images"]  # the socket stayed open after the error
    header, _, data = image["url"].partition(",")
    assert header == "data:image/png;base64" and "request_id" not in second
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (48, 48)


def test_realtime_refuses_a_wrong_key_both_ways(server: Server) -> None:  # noqa: F811
    refused = run_sdk(
        server,
        f"""
        import fal_client
        from fal_client.client import FalClientHTTPError
        from websockets.exceptions import InvalidStatus

        with_token = http_error(lambda: fal_client.realtime({APP!r}).__enter__())
        try:
            fal_client.realtime({APP!r}, use_jwt=False).__enter__()
            raise AssertionError("expected the handshake to fail")
        except InvalidStatus as e:
            header = e.response.status_code
        emit({{"token": with_token, "header": header}})
        """,
        key="not-a-key",
    )
    assert refused["token"]["status"] == 401 and refused["token"]["error_type"] == "unauthorized"
    assert refused["header"] == 401


@pytest.mark.skipif(
    shutil.which("node") is None or not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir(),
    reason="needs node and `npm ci --prefix tests/e2e/js` (make test-setup does it when npm is present)",
)
def test_realtime_with_fals_js_client(server: Server) -> None:  # noqa: F811
    env = {
        k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("FAL_")
    }
    env.update(FAL_KEY=KEY, NODE_EXTRA_CA_CERTS=str(server.cert), NO_PROXY="127.0.0.1,localhost")
    done = subprocess.run(
        ["node", "--experimental-websocket", str(JS_DIR / "realtime_check.mjs"), server.base],
        env=env, cwd=JS_DIR, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    results = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and results, f"node failed ({done.returncode}):\n{done.stderr[-4000:]}"
    outcome = json.loads(results[-1])
    assert outcome["dialed"] == ["wss://fal.run/darkroom/demo-flux-2/realtime"]
    (error,) = outcome["errors"]
    assert error["body"]["error"] == "validation_error" and error["body"]["request_id"] == "js-1"
    result = outcome["result"]
    assert result["request_id"] == "js-2" and result["seed"] == 11
    check_image(server, result["images"][0], (48, 32))
