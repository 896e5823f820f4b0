"""Node packs over HTTP (GET/POST /nodes, DELETE /nodes/{name}): admin keys only, since installing a
pack runs its code; a pack built as a local git repository is added, listed, refused when another
source's pack has its name, and removed; the OpenAPI document declares each answer."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient
from queue_fakes import FakeGenerator, serve

from server.engine.node_packs import read_lock
from server.settings import load_settings
from tests.node_pack_builds import build_pack

ADMIN = {"Authorization": "Key packs-admin-key"}
Client = TestClient[web.Request, web.Application]


async def key(client: Client, role: str) -> dict[str, str]:
    made = await client.post("/keys", json={"name": f"packs-{role}", "role": role}, headers=ADMIN)
    assert made.status == 201, await made.text()
    return {"Authorization": f"Key {(await made.json())['key']}"}


async def test_admins_add_list_and_remove_packs_others_are_refused(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path / "data"), api_keys="packs-admin-key")
    source = build_pack(tmp_path / "ours", "v1pack")
    async with serve(settings, FakeGenerator(settings)) as client:
        for role in ("runner", "developer"):
            refused = await client.post(
                "/nodes", json={"source": str(source)}, headers=await key(client, role)
            )
            body = await refused.json()
            assert refused.status == 403 and body["error_type"] == "forbidden" and "admin" in body["detail"]
        assert not (settings.data_path / "node_packs.yaml").exists(), "a refused key installed nothing"

        added = await client.post("/nodes", json={"source": str(source)}, headers=ADMIN)
        pack = await added.json()
        assert added.status == 201, pack
        locked = read_lock(settings.data_path / "node_packs.yaml")["v1pack"]
        assert (pack["name"], pack["source"], pack["commit"], pack["sha256"]) == (
            "v1pack", str(source), locked.commit, locked.sha256,
        )  # fmt: skip
        assert pack["state"] == "pending"  # the workers have not loaded and verified it yet
        listed = await (await client.get("/nodes", headers=ADMIN)).json()
        assert [(p["name"], p["commit"], p["state"]) for p in listed["packs"]] == [
            ("v1pack", locked.commit, "pending")
        ]

        theirs = build_pack(tmp_path / "theirs", "v1pack")
        for body, status, wanted in (
            ({"source": str(theirs)}, 422, "node pack name 'v1pack' is taken by the pack from"),
            ({"source": "--upload-pack=touch /tmp/x"}, 422, "source"),
            ({"source": str(tmp_path / "nowhere")}, 422, "git clone"),
            ({"source": str(theirs), "name": "../up"}, 422, "name"),
        ):
            refused = await client.post("/nodes", json=body, headers=ADMIN)
            answer = await refused.json()
            assert refused.status == status and wanted in str(answer["detail"]), (body, answer)
        other = await client.post(
            "/nodes", json={"source": str(theirs), "name": "v1pack-theirs"}, headers=ADMIN
        )
        assert other.status == 201 and (await other.json())["name"] == "v1pack-theirs"

        removed = await client.delete("/nodes/v1pack", headers=ADMIN)
        assert removed.status == 200 and (await removed.json())["commit"] == locked.commit
        assert list(read_lock(settings.data_path / "node_packs.yaml")) == ["v1pack-theirs"]
        assert not (settings.data_path / "node_packs/nodes/v1pack").exists()
        again = await client.delete("/nodes/v1pack", headers=ADMIN)
        answer = await again.json()
        assert again.status == 404 and answer["error_type"] == "node_pack_not_found", answer
        assert "installed: v1pack-theirs" in answer["detail"]

        document = await (await client.get("/openapi.json")).json()
        for method, statuses in (("get", {"200"}), ("post", {"201", "422"})):
            operation = document["paths"]["/nodes"][method]
            assert operation["x-darkroom-role"] == "admin" and statuses | {"401", "403"} <= set(
                operation["responses"]
            ), operation["responses"]
        assert {"200", "404", "403"} <= set(document["paths"]["/nodes/{name}"]["delete"]["responses"])
