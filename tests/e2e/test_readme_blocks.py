"""The README's runnable blocks, run as a reader runs them: each ``run open`` block against the
session's open-access server (http, no key), each ``run keyed`` block against the session's
`darkroom serve` with a key over TLS (its self-signed certificate as ``cert.pem`` in the directory,
trusted only through the variables the README names), with only the host, port and key substituted;
``file`` blocks are written where the run blocks find them. The standalone webhook check is run on
signatures the keyed server's own key made."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from served import KEY, Server

from server.engine.models import load_manifest
from server.queue.webhooks import WebhookSigner
from tests.marked import marked_flux2
from tests.readme import README, Marked, marked, substitute

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="session")]

RUNS = marked(README, "run")
BLOCK_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, served_darkroom: Server) -> Path:
    """The reader's directory: the README's files, the server's certificate and an exported workflow."""
    directory = tmp_path_factory.mktemp("readme")
    for block in marked(README, "file"):
        (directory / block.args[0]).write_text(block.text)
    shutil.copy(served_darkroom.cert, directory / "cert.pem")
    (directory / "api.json").write_text(json.dumps(marked_flux2(load_manifest())))  # the editor's export
    return directory


async def run_block(block: Marked, code: str, workdir: Path) -> tuple[int, str]:
    """Run a block as a reader's shell would (the project's venv first on PATH, no proxies, none of
    the settings or certificate variables of this process): its exit status and output."""
    unset = ("DARKROOM_", "SSL_CERT", "CURL_CA", "NODE_EXTRA", "FAL_")
    env = {k: v for k, v in os.environ.items() if not (k.lower().endswith("_proxy") or k.startswith(unset))}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    shell = ["bash", "-e", "-o", "pipefail", "-c", code]
    command = shell if block.lang == "sh" else [sys.executable, "-c", code]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=BLOCK_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.parametrize("block", RUNS, ids=[block.where() for block in RUNS])
async def test_a_readme_block_runs_as_written(
    block: Marked, facade: TestClient, served_darkroom: Server, workdir: Path
) -> None:
    if block.args == ["open"]:
        code = substitute(block.text, address=f"127.0.0.1:{facade.server.port}")
    else:
        code = substitute(block.text, address=f"127.0.0.1:{served_darkroom.port}", key=KEY)
    code_status, output = await run_block(block, code, workdir)
    assert code_status == 0, f"{block.where()} exited {code_status}:\n{output[-3000:]}"
    expected = block.options["expect"]
    assert expected in output, f"{block.where()}: no {expected!r} in:\n{output[-3000:]}"


async def test_the_standalone_webhook_check_verifies_what_the_server_signs(served_darkroom: Server) -> None:
    (block,) = marked(README, "webhook-verify")
    assert "from server" not in block.text and "import server" not in block.text, "it must not need darkroom"
    namespace: dict[str, Any] = {}
    exec(compile(block.text, block.where(), "exec"), namespace)  # the README's own code
    verify = namespace["verify_webhook"]
    with urllib.request.urlopen(
        f"{served_darkroom.base}/.well-known/jwks.json", context=served_darkroom.ssl_context(), timeout=10
    ) as response:
        jwks = json.loads(response.read())
    signer = WebhookSigner.load_or_create(served_darkroom.log.parent / "data" / "webhook_ed25519.key")
    body = json.dumps({"request_id": "r1", "status": "OK", "payload": {"images": []}}).encode()
    headers = signer.headers(request_id="r1", user_id="darkroom", body=body, timestamp_s=time.time())
    assert verify(jwks, headers, body)
    assert not verify(jwks, headers, body + b" ")
    assert not verify(jwks, {**headers, "X-Fal-Webhook-User-Id": "mallory"}, body)
    stale = signer.headers(request_id="r1", user_id="darkroom", body=body, timestamp_s=time.time() - 600)
    assert not verify(jwks, stale, body)
