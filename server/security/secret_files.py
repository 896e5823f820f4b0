"""Secrets the server makes once and keeps (webhook key, token secret): in its data directory, or,
for a fleet, in the job store's PostgreSQL database, so that every host signs webhooks with the one
key its JWKS publishes and accepts the tokens and sessions any other host issued."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import psycopg

from server.errors import ConfigError

logger = logging.getLogger(__name__)

SECRET_FILE_MODE = 0o600
_SECRETS_LOCK_ID = 0x73656372  # "secr": pg_advisory_xact_lock key while a fleet's secret is made


def load_or_create(
    path: Path, size_bytes: int, *, what: str, on_delete: str, database_url: str = ""
) -> bytes:
    """The ``size_bytes`` random bytes in ``path`` (mode 0600), written on first use; with a
    ``database_url``, the fleet's under ``path``'s name in that database instead. ``what`` names the
    secret in messages; ``on_delete`` says what replacing it breaks."""
    if database_url:
        return _shared(database_url, path.name, size_bytes, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) != size_bytes:
            raise ConfigError(
                f"{path} is not {what} (expected {size_bytes} bytes, got {len(secret)}); "
                f"delete it to generate a new one ({on_delete})"
            ) from None
        return secret
    secret = secrets.token_bytes(size_bytes)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    logger.info("generated %s in %s", what, path)
    return secret


def _shared(database_url: str, name: str, size_bytes: int, what: str) -> bytes:
    """The fleet's secret ``name``: made by the first host that asks, read by every other."""
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=30) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SECRETS_LOCK_ID,))  # hosts starting together
            conn.execute("CREATE SCHEMA IF NOT EXISTS darkroom")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS darkroom.secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL)"
            )
            row = conn.execute("SELECT value FROM darkroom.secrets WHERE name = %s", (name,)).fetchone()
            if row is None:
                row = (secrets.token_bytes(size_bytes),)
                conn.execute("INSERT INTO darkroom.secrets (name, value) VALUES (%s, %s)", (name, row[0]))
                logger.info("generated %s for the fleet (in its database)", what)
    except psycopg.Error as e:
        raise ConfigError(f"cannot read {what} from the fleet's database (DARKROOM_DATABASE_URL): {e}") from e
    secret = bytes(row[0])
    if len(secret) != size_bytes:
        raise ConfigError(f"darkroom.secrets {name!r} is not {what} ({len(secret)} bytes, not {size_bytes})")
    return secret
