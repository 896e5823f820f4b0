"""Which third-party node packs a workflow being published uses: each node a pack serves gets
``_meta.node_pack: {name, commit}`` in the published prompt (ComfyUI ignores ``_meta``), so the version
records its packs at their commits (``needed_packs``) and a host lacking one answers 503 naming it. A node
of a pack that is not installed (the editor's workflow names it: ``properties.aux_id``/``cnr_id`` and
``ver``, as ComfyUI-Manager reads them) or not working is a 422 naming the pack and what to do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.engine.pack_check import OK, PackReport


def record_packs(
    prompt: dict[str, dict[str, Any]], workflow: Mapping[str, Any] | None, node_types: Mapping[str, Any],
    report: PackReport,
) -> list[dict[str, Any]]:  # fmt: skip
    """Mark ``prompt``'s pack nodes in place; the 422 entries for nodes whose pack is missing or failed."""
    hints = _editor_hints(workflow)
    errors = []
    for node_id, node in prompt.items():
        class_type = node["class_type"]
        owner = report.owner_of(class_type)
        if owner is not None:
            node["_meta"] = {
                **(node.get("_meta") or {}),
                "node_pack": {"name": owner.name, "commit": owner.commit},
            }
            if owner.state != OK:
                why = "; ".join(owner.problems) or "it is being installed or verified"
                message = (
                    f"node type {class_type!r} is from node pack {owner.name}, which is {owner.state}: {why}"
                )
                errors.append(_error(node_id, message))
        elif class_type not in node_types:
            errors.append(_error(node_id, _not_installed(class_type, hints.get(class_type))))
    return errors


def _error(node_id: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", "prompt", node_id], "msg": message, "type": "node_pack_missing"}


def _not_installed(class_type: str, hint: Mapping[str, Any] | None) -> str:
    if hint is None:
        return (
            f"unknown node type {class_type!r}: no worker has it; if a node pack provides it, the host's "
            "operator installs it with `darkroom nodes add SOURCE[@REV]`"
        )
    ver = f"@{hint['ver']}" if hint.get("ver") else ""
    if hint.get("aux_id"):
        pack, source = str(hint["aux_id"]), f"https://github.com/{hint['aux_id']}"
    else:
        pack, source = str(hint["cnr_id"]), f"<the git URL of {hint['cnr_id']}>"
    return (
        f"node type {class_type!r} is from node pack {pack}, which is not installed: the host's operator "
        f"installs it with `darkroom nodes add {source}{ver}`"
    )


def _editor_hints(workflow: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """``{node type: properties}`` of the editor's nodes that name their pack."""
    nodes = workflow.get("nodes") if isinstance(workflow, Mapping) else None
    hints = {}
    for node in nodes if isinstance(nodes, list) else []:
        properties = node.get("properties") if isinstance(node, Mapping) else None
        if not isinstance(properties, Mapping):
            continue
        pack = properties.get("aux_id") or properties.get("cnr_id")
        if pack and properties.get("cnr_id") != "comfy-core":
            hints[str(node.get("type"))] = properties
    return hints
