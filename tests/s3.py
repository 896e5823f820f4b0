"""A real S3-compatible server for the tests: moto's (``python -m moto.server``) on a free loopback
port, polled until it answers and stopped at the end. Each test takes a fresh bucket.

The AWS variables that point the SDK at it (fake credentials, the endpoint, a region; no config files,
no instance metadata) live here, never in server code: ``S3Server.env`` is for subprocesses
(``darkroom serve``), the ``s3_env`` fixture puts it into this process's environment for one test.
Where moto is missing the tests that need it skip saying why; under CI=true they fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.engine.worker import free_port
from tests.processes import stop_process

READY_TIMEOUT_S = 30.0


def moto_or_skip() -> None:
    """Skip (fail under CI=true) when moto's server is not installed."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        message = "S3 tests need moto's server: pip install 'moto[server]' (in the dev extra)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@dataclass
class S3Server:
    """One running moto server; ``bucket()`` makes a fresh, empty bucket and returns its storage URL."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What the AWS SDK needs to reach this server (and nothing else: no files, no metadata)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A plain (synchronous) boto3 client, for the tests' own looks into the bucket."""
        import boto3  # moto's dependency: only where moto is

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def bucket(self, prefix: str = "darkroom") -> str:
        """A fresh bucket; its ``s3://bucket/prefix`` URL."""
        name = "t-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/{prefix}" if prefix else f"s3://{name}"

    def keys(self, url: str) -> list[str]:
        """Every key under a storage URL's bucket and prefix, sorted, relative to the prefix."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = f"{prefix.strip('/')}/" if prefix else ""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(entry["Key"][len(prefix) :] for page in pages for entry in page.get("Contents", ()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    """Start moto's server on loopback; stop it (and remove its log) at the end."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="darkroom-moto-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = S3Server(port, process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_process(process, timeout_s=10)
        log_path.unlink(missing_ok=True)


def _wait_ready(server: S3Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"moto exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto not ready in {READY_TIMEOUT_S:g} s:\n{server.log()}")
