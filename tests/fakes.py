"""Fakes for process boundaries that several test tiers share (import as `tests.fakes`)."""

from __future__ import annotations

from typing import Any


class IdleSupervisor:
    """Stands in for the worker supervisor where a test needs the app but no ComfyUI: no workers."""

    workers: list[Any] = []
    idle_workers = 0

    def __init__(self, *, ready: bool = False) -> None:
        self.ready = ready

    def warm_keys(self) -> set[str]:
        return set()

    async def start(self, *, wait: bool = True) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def wait_ready(self) -> None:
        return None
