"""Whether the locked node packs work in a started worker, and what each one provides.

A pack is ``ok`` when ComfyUI imported it (it logs only "IMPORT FAILED" when not), every node id it
declares is served as its own in /object_info (not overridden by another pack, not shadowed by a core
node) and it serves at least one node. The report is kept in ``<data dir>/node_packs.status.json`` for
``darkroom nodes list`` and shown on the dashboard; published workflows needing a pack that is not ok
answer 503 naming it (``missing_packs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from server.engine.node_packs import LockedPack

OK = "ok"
FAILED = "failed"
PENDING = "pending"  # locked, not yet verified in a worker (installing, restarting)


@dataclass(frozen=True)
class PackState:
    name: str
    commit: str
    state: str
    problems: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # the node ids /object_info serves as this pack's

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "problems": list(self.problems), "nodes": list(self.nodes)}


@dataclass
class PackReport:
    """The last verification: each locked pack's state, and the lock digest it was made for."""

    digest: str = ""
    packs: dict[str, PackState] = field(default_factory=dict)

    def owner_of(self, node_type: str) -> PackState | None:
        return next((p for p in self.packs.values() if node_type in p.nodes), None)

    def describe(self) -> dict[str, Any]:
        return {"digest": self.digest, "packs": [p.describe() for p in self.packs.values()]}

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PackReport:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        packs = [
            PackState(**{**p, "problems": tuple(p["problems"]), "nodes": tuple(p["nodes"])})
            for p in data.get("packs", [])
        ]
        return cls(data.get("digest", ""), {p.name: p for p in packs})


def pending(locked: Mapping[str, LockedPack], digest: str) -> PackReport:
    return PackReport(digest, {n: PackState(n, p.commit, PENDING) for n, p in locked.items()})


def check_packs(
    locked: Mapping[str, LockedPack], nodes_dir: Path, *, digest: str, declared: Mapping[str, list[str]],
    object_info: Mapping[str, Any], failed_imports: Iterable[str],
) -> PackReport:  # fmt: skip
    """Each locked pack's state in a worker that served ``object_info`` and ``declared`` (GET
    /darkroom/packs) and logged ``failed_imports`` (custom-nodes paths) at start-up."""
    failed = {Path(p).name for p in failed_imports if Path(p).parent == nodes_dir}
    served = {
        node_id: str(info.get("python_module", "nodes")).removeprefix("custom_nodes.")
        for node_id, info in object_info.items()
        if isinstance(info, Mapping)
    }
    problems: dict[str, list[str]] = {name: [] for name in locked}
    for name in locked:
        if name in failed:
            problems[name].append("failed to import (ComfyUI logged IMPORT FAILED; its log says why)")
        elif name not in declared:
            problems[name].append("was not loaded by the worker")
        for node_id in declared.get(name, []):
            owner = served.get(node_id)
            if owner is None or owner == name or name in failed:
                continue
            if owner in locked:
                problems[name].append(f"its node {node_id} is overridden by node pack {owner}")
                problems[owner].append(f"it overrides node {node_id} of node pack {name}")
            else:
                problems[name].append(f"its node {node_id} is shadowed by {owner}'s (ComfyUI keeps that one)")
    report = PackReport(digest)
    for name, pack in locked.items():
        nodes = tuple(sorted(n for n, owner in served.items() if owner == name))
        if not nodes and not problems[name]:
            problems[name].append("serves no nodes")
        found = tuple(dict.fromkeys(problems[name]))
        report.packs[name] = PackState(name, pack.commit, FAILED if found else OK, found, nodes)
    return report


def missing_packs(report: PackReport, needed: Mapping[str, str]) -> list[str]:
    """Why each pack in ``needed`` (name -> commit, as recorded when publishing) cannot serve now."""
    why = []
    for name, commit in needed.items():
        state = report.packs.get(name)
        if state is None:
            why.append(f"node pack {name} is not installed (`darkroom nodes add SOURCE@{commit}`)")
        elif state.state != OK:
            detail = "; ".join(state.problems) or "it is being installed or verified"
            why.append(f"node pack {name} is {state.state}: {detail}")
    return why


def needed_packs(nodes: Mapping[str, Any]) -> dict[str, str]:
    """The packs (name -> commit) a published prompt records in its nodes' ``_meta.node_pack``."""
    needed = {}
    for node in nodes.values():
        meta = node.get("_meta") if isinstance(node, Mapping) else None
        pack = meta.get("node_pack") if isinstance(meta, Mapping) else None
        if isinstance(pack, Mapping) and isinstance(pack.get("name"), str):
            needed[pack["name"]] = str(pack.get("commit", ""))
    return needed
