"""What an hour of a worker costs (``DARKROOM_GPU_HOURLY_USD``), looked up when a usage row is written.

The setting is a comma-separated list of entries, each ``PRICE`` or ``NAME=PRICE`` (USD per hour, a
number >= 0):

- ``2.49``: any worker (the fallback);
- ``cuda=2.49``, ``cpu=0``: a device kind (a worker with a GPU is ``cuda``, one without ``cpu``);
- ``worker1=0.75``: this host's worker 1 (the worker ids ``/ready`` lists, from 0);
- ``H100=2.49``, ``A10=0.75``: any other name is part of a device's name as the worker's ComfyUI
  reports it in ``/system_stats`` (``NVIDIA H100 80GB HBM3``), matched case-insensitively.

A worker's price: its ``workerN`` entry, else the longest device-name entry its device's name contains
(``A100`` before ``A10`` for an A100), else its device kind's, else the plain price, else 0 (unpriced).
Each host prices its own workers with its own setting, when it writes the row: the cost is stored
with the row, so a later change of the setting prices later rows only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.errors import ConfigError

KINDS = ("cpu", "cuda")
ANY = "*"
_WORKER = re.compile(r"worker(\d+)")
_FORMS = "give '2.49', 'cuda=2.49,cpu=0', 'worker1=0.75' or a device name's part as in 'H100=2.49'"


@dataclass(frozen=True)
class HourlyPrices:
    """The parsed setting (``parse``): USD per hour by worker id, device-name part and device kind."""

    entries: Mapping[str, float] = field(default_factory=dict)  # as written: "*", "cuda", "worker1", "H100"
    # The device-name entries, lower-cased, longest first (the longest contained in a name wins).
    _names: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> HourlyPrices:
        """The setting's entries; a ConfigError (at start-up) names the entry that is wrong and the forms."""
        entries: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            named, equals, value = part.rpartition("=")
            name = named.strip()
            try:
                price = float(value)
            except ValueError:
                price = -1.0
            if not 0 <= price < float("inf"):
                raise ConfigError(f"DARKROOM_GPU_HOURLY_USD: {part!r} is not a price (USD/h >= 0); {_FORMS}")
            if equals and (not name or "=" in name):
                raise ConfigError(f"DARKROOM_GPU_HOURLY_USD: {part!r} names no device; {_FORMS}")
            key = ANY if not equals else name.lower() if _is_kind_or_worker(name.lower()) else name
            if key in entries:
                raise ConfigError(f"DARKROOM_GPU_HOURLY_USD: {key!r} is priced twice; {_FORMS}")
            entries[key] = price
        names = [(n.lower(), p) for n, p in entries.items() if n != ANY and not _is_kind_or_worker(n)]
        return cls(entries, tuple(sorted(names, key=lambda entry: -len(entry[0]))))

    def hourly_usd(self, kind: str, worker: int | None = None, device_name: str = "") -> float:
        """The price of an hour on worker ``worker`` (of this host) whose device is ``device_name`` of
        ``kind``; without a worker or name (a row written before they were recorded): by kind only."""
        if worker is not None and (price := self.entries.get(f"worker{worker}")) is not None:
            return price
        if device_name and self._names:
            lowered = device_name.lower()
            for part, price in self._names:
                if part in lowered:
                    return price
        return self.entries.get(kind, self.entries.get(ANY, 0.0))

    def cost_usd(self, gpu_s: float, kind: str, worker: int | None = None, device_name: str = "") -> float:
        """What ``gpu_s`` seconds on that worker cost."""
        return gpu_s / 3600.0 * self.hourly_usd(kind, worker, device_name)


def _is_kind_or_worker(name: str) -> bool:
    return name in KINDS or _WORKER.fullmatch(name) is not None
