"""Fixtures every tier shares: the job stores, so queue tests run against SQLite and PostgreSQL both, and
a real S3-compatible server for the shared file storage (DARKROOM_STORAGE_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.queue.postgres_store import PostgresJobStore
from server.queue.sqlite_store import SqliteJobStore
from server.queue.store import JobStore
from tests.postgres import PostgresServer, postgres_or_skip, running_postgres
from tests.s3 import S3Server, moto_or_skip, running_s3

STORE_KINDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session, on loopback; each test takes a fresh database."""
    with running_postgres(postgres_or_skip()) as server:
        yield server


@pytest.fixture(params=STORE_KINDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """``DARKROOM_DATABASE_URL`` per store: "" (SQLite in the data dir) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.database()


@pytest.fixture
def new_job_store(database_url: str, tmp_path: Path) -> Callable[[], JobStore]:
    """Makes unopened stores on one database (call it again for a second host or a restart)."""
    if database_url:
        return lambda: PostgresJobStore(database_url)
    return lambda: SqliteJobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session, on loopback; each test takes a fresh bucket."""
    moto_or_skip()
    with running_s3() as server:
        yield server


@pytest.fixture
def storage_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's ``DARKROOM_STORAGE_URL``, with the AWS variables that reach it set for this test."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.bucket()
