"""Fixtures every tier shares: the job stores, so queue tests run against SQLite and PostgreSQL both, and
a real S3-compatible server for the shared file storage (DARKROOM_STORAGE_URL). And the log scan after
the suite (tests/log_scan.py): the run fails if a key or a request's control character reached a log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.queue.postgres_store import PostgresJobStore
from server.queue.sqlite_store import SqliteJobStore
from server.queue.store import JobStore
from server.security.keyring import KeyRing
from server.settings import Settings
from tests import log_scan
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


def pytest_configure(config: pytest.Config) -> None:
    """Collect what the in-process apps log, and the keys they are configured with, for the log scan."""
    collector = log_scan.Collector()
    logging.getLogger().addHandler(collector)
    for name in ("server", "darkroom"):  # INFO records too (the access log, refused requests)
        logging.getLogger(name).setLevel(logging.INFO)
    config.stash[_COLLECTOR] = collector
    original = KeyRing.from_settings.__func__  # type: ignore[attr-defined]

    def from_settings(cls: type[KeyRing], settings: Settings, *args: Any, **kwargs: Any) -> KeyRing:
        log_scan.register(*(entry.split()[0] for entry in settings.api_keys.split(",") if entry.strip()))
        return original(cls, settings, *args, **kwargs)  # type: ignore[no-any-return]

    KeyRing.from_settings = classmethod(from_settings)  # type: ignore[method-assign, assignment]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The log scan: any finding fails the run, each one said. Under pytest-xdist (make test runs two
    workers) each worker scans its own logs and hands its findings to the controller, which says them."""
    config = session.config
    collector = config.stash.get(_COLLECTOR, None)
    if collector is None:
        return
    logging.getLogger().removeHandler(collector)
    collector.scan()
    findings = [*log_scan.findings, *config.stash.get(_WORKER_FINDINGS, [])]
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its exit status does not reach the run's
        workeroutput["log_scan"] = findings
        return
    if findings:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        lines = ["log scan: a key or a request's control character reached a log", *findings]
        if reporter is not None:
            reporter.write_sep("=", "log scan failed", red=True)
            for line in lines:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: keep a finished worker's log-scan findings for the run's own scan."""
    findings = getattr(node, "workeroutput", {}).get("log_scan", [])
    node.config.stash.setdefault(_WORKER_FINDINGS, []).extend(findings)


_COLLECTOR = pytest.StashKey[log_scan.Collector]()
_WORKER_FINDINGS = pytest.StashKey[list[str]]()
