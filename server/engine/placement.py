"""Which idle worker a request gets: one that has its models loaded, else the one whose loss costs least.

Workers run one prompt at a time, so every idle worker carries the same load (none); what differs is
what each has loaded. A worker's ``warm_key`` is the model key (``Endpoint.model_key``) of the last
prompt it was lent for, None when unknown or empty (never used, restarted, or lent without a key, as
the editor's raw prompts are). The order, best first:

1. an idle worker warm for the request's key: no load at all;
2. an idle worker with nothing loaded: a load, but nothing evicted;
3. the idle worker idle longest: least-recently-used eviction, so a model in steady use stays warm
   while the stalest one goes; and among equals it hands work round in turn, which spreads a burst
   over every worker. (Fewest runs would instead keep favouring a worker that was just restarted.)

This only picks WHICH idle worker a borrower gets; who is served first stays with the supervisor
(arrival order), so a warm worker never lets a later request overtake an earlier one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Candidate", "pick_idle"]


class Candidate(Protocol):
    """What placement reads of a worker."""

    @property
    def warm_key(self) -> str | None: ...

    @property
    def idle_since_s(self) -> float: ...  # time.monotonic() when it last became idle


C = TypeVar("C", bound=Candidate)


def pick_idle(idle: Sequence[C], model_key: str | None) -> C | None:
    """The idle worker a request for ``model_key`` should get (None if none is idle); see the module."""
    warm = [w for w in idle if model_key is not None and w.warm_key == model_key]
    return min(warm or idle, key=lambda w: (w.warm_key is not None, w.idle_since_s), default=None)
