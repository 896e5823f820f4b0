"""Published versions: immutable, numbered, served as owner/name (latest) and owner/name@n, kept on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.models import load_manifest
from server.errors import NotFoundError, RequestValidationError
from server.workflows.catalog import Catalog
from server.workflows.mapping import Endpoint
from tests.marked import marked_flux2, set_input
from tests.unit.server.workflows.test_published import node_types

MANIFEST = load_manifest()
BUILTIN = "darkroom/demo-flux-2"


def catalog(root: Path, endpoints: dict[str, Endpoint] | None = None) -> Catalog:
    table = endpoints if endpoints is not None else {BUILTIN: None}  # type: ignore[dict-item]
    made = Catalog(root, table, MANIFEST)  # type: ignore[arg-type]
    made.load()
    return made


def test_versions_are_numbered_served_and_kept(tmp_path: Path) -> None:
    prompt = marked_flux2(MANIFEST)
    first = catalog(tmp_path)
    v1 = first.publish("me/art", prompt, {"nodes": []}, node_types(prompt))
    v2 = first.publish("me/art", set_input(prompt, "22", "value", 3), None, node_types(prompt))
    assert (v1.number, v2.number, v2.app_id) == (1, 2, "me/art@2")
    table = first.endpoints
    assert {"me/art", "me/art@1", "me/art@2"} <= set(table)
    assert table["me/art"].params["num_inference_steps"].default == 3, "the name serves the latest"
    assert table["me/art@1"].params["num_inference_steps"].default == 2, "@1 stays the first version"
    assert table["me/art@1"].app_id == "me/art@1"

    again = catalog(tmp_path)  # a restart
    assert [v.number for v in again.versions("me/art")] == [1, 2]
    assert again.version("me/art", 1).workflow == {"nodes": []}
    assert again.endpoints["me/art"].params["num_inference_steps"].default == 3

    rollback = again.publish("me/art", again.version("me/art", 1).prompt, None, node_types(prompt))
    assert rollback.number == 3 and again.endpoints["me/art"].params["num_inference_steps"].default == 2


def test_unpublish_stops_serving_every_version(tmp_path: Path) -> None:
    prompt = marked_flux2(MANIFEST)
    made = catalog(tmp_path)
    made.publish("me/art", prompt, None, node_types(prompt))
    assert [v.number for v in made.unpublish("me/art")] == [1]
    assert "me/art" not in made.endpoints and "me/art@1" not in made.endpoints
    assert not (tmp_path / "me" / "art").exists()
    with pytest.raises(NotFoundError, match="No published workflow 'me/art'"):
        made.versions("me/art")
    assert catalog(tmp_path).names() == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (BUILTIN, "collides with the built-in endpoint"),
        ("darkroom", "must be owner/name"),
        ("Me/Art", "must be owner/name"),
        ("me/art@2", "must be owner/name"),
        ("me/art/extra", "must be owner/name"),
        ("workflows/art", "is reserved"),
    ],
)
def test_bad_names_are_422s(tmp_path: Path, name: str, message: str) -> None:
    prompt = marked_flux2(MANIFEST)
    with pytest.raises(RequestValidationError) as caught:
        catalog(tmp_path).publish(name, prompt, None, node_types(prompt))
    assert message in caught.value.errors[0]["msg"] and caught.value.errors[0]["loc"] == ["body", "name"]


def test_a_name_that_prefixes_a_builtin_endpoint_collides(tmp_path: Path) -> None:
    prompt = marked_flux2(MANIFEST)
    with pytest.raises(RequestValidationError, match="collides"):
        catalog(tmp_path, {"fal-ai/flux/dev": None}).publish("fal-ai/flux", prompt, None, node_types(prompt))  # type: ignore[dict-item]


def test_a_rejected_workflow_leaves_nothing_behind(tmp_path: Path) -> None:
    prompt = marked_flux2(MANIFEST)
    types = node_types(prompt)
    made = catalog(tmp_path)
    with pytest.raises(RequestValidationError):
        made.publish("me/art", set_input(prompt, "22", "field", "prompt"), None, types)
    assert made.names() == [] and "me/art" not in made.endpoints and not list(tmp_path.rglob("*.json"))
