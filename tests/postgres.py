"""A real PostgreSQL server for the tests: Debian's `postgresql` package, a fresh cluster in a temporary
directory, listening on a free loopback port, stopped (and its directory removed) at the end.

As root (CI) the server runs as the package's `postgres` user, since PostgreSQL refuses to run as
root. Where the package is missing the tests that need it skip saying why; under CI=true they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from server.engine.worker import free_port
from tests.processes import stop_process

READY_TIMEOUT_S = 60.0


def _bin_dir() -> Path | None:
    if found := shutil.which("postgres") or shutil.which("initdb"):
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(dirs[-1]) if dirs else None


def postgres_or_skip() -> Path:
    """The server binaries' folder, or skip (fail under CI=true) saying what is missing."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        message = "PostgreSQL tests need Debian's postgresql package (make test-setup installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return bin_dir


@dataclass
class PostgresServer:
    """One running cluster; ``database()`` makes a fresh, empty database and returns its URL."""

    port: int
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def admin_url(self) -> str:
        return f"postgresql://darkroom@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://darkroom@127.0.0.1:{self.port}/{name}"

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    """Start a throwaway cluster (fsync off: the tests need durability across processes, not power loss)."""
    root = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "darkroom", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
         "-c", "max_connections=200"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = PostgresServer(port, process, root)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_process(process, timeout_s=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PostgresServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(server.admin_url, connect_timeout=2).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"postgres not ready in {READY_TIMEOUT_S:g} s:\n{server.log()}")
