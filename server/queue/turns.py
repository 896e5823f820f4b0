"""Sync runs' turns among the queue's requests.

A sync run (``/run``, ``/run/.../stream``, a realtime input) does not jump the queue: it waits until
every normal-priority queue request that was waiting when it arrived has been taken by a runner, and
is then granted its turn by a runner, which stays with it until it ends, so a worker is free for it
(there is one runner per worker). Queue requests that arrive after it, and low-priority ones, start
after it. Sync runs among themselves keep their arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Turn:
    """One sync run's place: the queue requests ahead of it, granted once none of them waits."""

    ahead: frozenset[str]
    granted: asyncio.Future[None]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SyncTurns:
    """The sync runs waiting for their turn, in arrival order."""

    def __init__(self) -> None:
        self._waiting: collections.deque[Turn] = collections.deque()

    @contextlib.asynccontextmanager
    async def turn(self, ahead: Iterable[str], wake: Callable[[], None]) -> AsyncIterator[None]:
        """Wait behind ``ahead`` (request ids) for a runner to grant the turn; hold it while inside."""
        turn = Turn(frozenset(ahead), asyncio.get_running_loop().create_future())
        self._waiting.append(turn)
        wake()
        try:
            await turn.granted
            yield
        finally:
            turn.done.set()
            with contextlib.suppress(ValueError):
                self._waiting.remove(turn)

    def grant_next(self, still_waiting: Callable[[str], bool]) -> Turn | None:
        """Grant the oldest turn if none of the requests ahead of it still waits; that turn, or None."""
        while self._waiting and self._waiting[0].granted.done():  # its run was cancelled meanwhile
            self._waiting.popleft()
        if not self._waiting or any(still_waiting(r) for r in self._waiting[0].ahead):
            return None
        turn = self._waiting.popleft()
        turn.granted.set_result(None)
        return turn

    def close(self, error: Exception) -> None:
        """Fail every turn not yet granted (the server stops)."""
        while self._waiting:
            granted = self._waiting.popleft().granted
            if not granted.done():
                granted.set_exception(error)
