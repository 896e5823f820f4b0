"""The fleet's bucket as the model files' second source (``SharedModels`` for ``darkroom models fetch``).

With ``DARKROOM_STORAGE_URL`` a file one host fetched from the hub and verified is put under
``models/sha256/<hex>`` once; the other hosts take it from there (and verify it again) before they go
to the hub. The key is the content's hash, so a copy can only ever be the file that was meant, and a
manifest entry renamed or moved between folders still finds it. The bucket being away is not an
error here: the hub is the fallback.

``fetch`` runs in threads; the store lives on its own event loop in a thread of its own, and the
fetch threads wait on it with ``ObjectStore.run_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from server.errors import DarkroomError
from server.media.objects import ObjectStore
from server.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "models/sha256"


class BucketModels:
    """``SharedModels`` over an open ObjectStore."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def take(self, sha256: str, dest: Path) -> bool:
        key = f"{PREFIX}/{sha256}"
        try:
            if self.store.run_sync(self.store.head(key)) is None:
                return False
            log.info("taking %s from %s", key, self.store.url)
            self.store.run_sync(self.store.download(key, dest))
            return True
        except DarkroomError as e:
            log.warning("shared bucket %s: %s; going to the hub", self.store.url, e)
            dest.unlink(missing_ok=True)
            return False

    def give(self, sha256: str, path: Path) -> None:
        key = f"{PREFIX}/{sha256}"
        try:
            if self.store.run_sync(self.store.head(key)) is not None:
                return
            self.store.run_sync(self.store.put_file(key, path, "application/octet-stream"))
            log.info("put %s into %s for the other hosts", path.name, self.store.url)
        except DarkroomError as e:
            log.warning("shared bucket %s: could not put %s: %s", self.store.url, path.name, e)


@contextlib.contextmanager
def opened(settings: Settings) -> Iterator[BucketModels | None]:
    """The bucket ``storage_url`` names, open for the block; None without one."""
    if not settings.storage_url:
        yield None
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="model bucket", daemon=True)
    thread.start()
    store = ObjectStore(settings.storage_url)
    try:
        asyncio.run_coroutine_threadsafe(store.open(), loop).result()
        try:
            yield BucketModels(store)
        finally:
            asyncio.run_coroutine_threadsafe(store.close(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
