"""Secrets the server makes once and keeps in its data directory (webhook key, token secret)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from server.errors import ConfigError

logger = logging.getLogger(__name__)

SECRET_FILE_MODE = 0o600


def load_or_create(path: Path, size_bytes: int, *, what: str, on_delete: str) -> bytes:
    """The ``size_bytes`` random bytes in ``path`` (mode 0600), written on first use. ``what`` names the
    secret in messages; ``on_delete`` says what replacing it breaks."""
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
