"""Secrets: one host's in its data directory; a fleet's in its PostgreSQL database (a real cluster),
the same for every host however many start at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from server.queue.webhooks import WebhookSigner
from server.security import secret_files
from server.security.tokens import TokenSigner
from tests.postgres import PostgresServer


def test_every_host_of_a_fleet_gets_the_same_secrets(tmp_path: Path, postgres_server: PostgresServer) -> None:
    url = postgres_server.database()

    def host(index: int) -> bytes:
        return secret_files.load_or_create(
            tmp_path / str(index) / "token_hmac.key",
            32,
            what="a token secret",
            on_delete="-",
            database_url=url,
        )

    with ThreadPoolExecutor(max_workers=6) as pool:  # hosts starting together
        found = set(pool.map(host, range(6)))
    assert len(found) == 1 and len(next(iter(found))) == 32
    assert not any(tmp_path.rglob("*.key")), "a fleet's secret is not written to a host's data dir"

    # A token one host issues is accepted by another; every host publishes the same webhook key.
    token, _ = TokenSigner.load_or_create(tmp_path / "a" / "token_hmac.key", database_url=url).issue(
        "apps", 60
    )
    assert TokenSigner.load_or_create(tmp_path / "b" / "token_hmac.key", database_url=url).verify(
        token, "apps"
    )
    jwks = {WebhookSigner.load_or_create(tmp_path / h / "webhook.key", database_url=url).kid for h in "ab"}
    assert len(jwks) == 1
    local = TokenSigner.load_or_create(tmp_path / "c" / "token_hmac.key")
    assert local.verify(token, "apps") is None, "without the fleet, a host keeps its own secret"
