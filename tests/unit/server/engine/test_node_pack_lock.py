"""The node-pack lock and installer on local git repositories and a local wheel (no network), and the
verification of a worker's packs from what it served and logged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from server.engine.node_packs import (
    Installer,
    PackError,
    content_hash,
    lock_digest,
    read_lock,
    split_source,
)
from server.engine.pack_check import OK, check_packs, missing_packs, needed_packs
from server.settings import load_settings
from tests.node_pack_builds import DEP, V1_NODE, V3_NODE, build_pack, build_wheel, commit_change


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip finds packages only in a local folder holding the test wheel."""
    folder = tmp_path / "wheels"
    build_wheel(folder)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def installer(data_dir: Path) -> Installer:
    return Installer(load_settings({}, data_dir=str(data_dir)))


def head(folder: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_add_locks_source_commit_hash_and_resolved_requirements(tmp_path: Path, wheels: Path) -> None:
    v1, wheelpack = build_pack(tmp_path / "src", "v1pack"), build_pack(tmp_path / "src", "wheelpack")
    first = head(v1)
    later = commit_change(v1, "web/v1pack.js", "// changed\n")
    packs = installer(tmp_path / "data")

    added = packs.add(f"{v1}@{first}")
    assert (added.name, added.source, added.commit, added.requirements) == ("v1pack", str(v1), first, ())
    installed = packs.paths.nodes / "v1pack"
    assert not (installed / ".git").exists()
    assert (installed / "web/v1pack.js").read_text().startswith("// darkroom test pack")  # the old commit
    assert added.sha256 == content_hash(installed)

    with_wheel = packs.add(str(wheelpack))
    assert with_wheel.requirements == (f"{DEP}==1.0.0",)
    assert (packs.paths.site / "darkroom_testpack_dep" / "__init__.py").read_text() == "VALUE = 42\n"

    assert read_lock(packs.paths.lock) == {"v1pack": added, "wheelpack": with_wheel}
    again = packs.add(str(v1))  # the default branch: the later commit replaces the locked one
    assert again.commit == later and again.sha256 != added.sha256
    assert packs.locked()["v1pack"] == again


def test_a_conflicting_requirement_is_refused_naming_it_and_leaves_nothing(
    tmp_path: Path, wheels: Path
) -> None:
    packs = installer(tmp_path / "data")
    packs.add(str(build_pack(tmp_path / "src", "v3pack")))
    before = packs.paths.lock.read_text()
    with pytest.raises(PackError) as refused:
        packs.add(str(build_pack(tmp_path / "src", "torchpack")))
    assert "torchpack is refused, nothing was installed" in refused.value.message
    assert "torch<2" in refused.value.message and "(constraint) torch" in refused.value.message
    assert packs.paths.lock.read_text() == before
    assert not [p for p in packs.paths.nodes.parent.iterdir() if p.name.startswith(".staging")]
    assert not (packs.paths.site / "torch").exists()
    assert sorted(p.name for p in packs.paths.nodes.iterdir()) == ["v3pack"]


def test_remove_and_sync_reproduce_the_lock_elsewhere(tmp_path: Path, wheels: Path) -> None:
    src = tmp_path / "src"
    here = installer(tmp_path / "here")
    v1, v3 = here.add(str(build_pack(src, "v1pack"))), here.add(str(build_pack(src, "v3pack")))
    here.add(str(build_pack(src, "brokenpack")))
    assert here.remove("brokenpack").name == "brokenpack"
    assert not (here.paths.nodes / "brokenpack").exists()
    with pytest.raises(PackError, match="no node pack 'nope' is installed; installed: v1pack, v3pack"):
        here.remove("nope")

    there = installer(tmp_path / "there")
    (there.paths.nodes / "stray").mkdir(parents=True)
    assert sorted(there.sync(here.locked())) == ["v1pack", "v3pack"]
    assert not (there.paths.nodes / "stray").exists()
    assert lock_digest(there.locked()) == lock_digest(here.locked())
    assert content_hash(there.paths.nodes / "v1pack") == v1.sha256
    assert there.sync() == []  # nothing to do
    (there.paths.nodes / "v3pack" / "__init__.py").write_text("tampered = True\n")
    assert there.sync() == ["v3pack"]
    assert content_hash(there.paths.nodes / "v3pack") == v3.sha256


def test_two_sources_ending_alike_do_not_replace_each_other(tmp_path: Path, wheels: Path) -> None:
    packs = installer(tmp_path / "data")
    ours, theirs = build_pack(tmp_path / "ours", "v1pack"), build_pack(tmp_path / "theirs", "v1pack")
    first = packs.add(str(ours))
    with pytest.raises(PackError) as refused:
        packs.add(str(theirs))
    assert f"node pack name 'v1pack' is taken by the pack from {ours}; {theirs} would replace it" in (
        refused.value.message
    )
    assert f"`darkroom nodes add {theirs} --name OTHER`" in refused.value.message
    assert packs.locked() == {"v1pack": first}
    other = packs.add(str(theirs), name="v1pack-theirs")
    assert packs.locked() == {"v1pack": first, "v1pack-theirs": other}
    assert sorted(p.name for p in packs.paths.nodes.iterdir()) == ["v1pack", "v1pack-theirs"]
    with pytest.raises(PackError, match="node pack name '../x' is not allowed"):
        packs.add(str(theirs), name="../x")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("https://github.com/o/pack.git@v1.2", ("https://github.com/o/pack.git", "v1.2")),
        ("https://github.com/o/pack", ("https://github.com/o/pack", None)),
        ("git@github.com:o/pack.git", ("git@github.com:o/pack.git", None)),
        ("git@github.com:o/pack.git@abc123", ("git@github.com:o/pack.git", "abc123")),
        ("/srv/packs/pack@main", ("/srv/packs/pack", "main")),
    ],
)
def test_split_source(spec: str, expected: tuple[str, str | None]) -> None:
    assert split_source(spec) == expected


def test_check_finds_import_failures_overrides_and_serves_nodes(tmp_path: Path, wheels: Path) -> None:
    src = tmp_path / "src"
    packs = installer(tmp_path / "data")
    for name in ("v1pack", "v3pack", "brokenpack", "overridepack"):
        packs.add(str(build_pack(src, name)))
    locked = packs.locked()
    nodes = packs.paths.nodes
    object_info = {
        "KSampler": {"python_module": "nodes"},
        V1_NODE: {"python_module": "custom_nodes.v1pack"},
        V3_NODE: {"python_module": "custom_nodes.overridepack"},  # loaded last: it won
    }
    report = check_packs(
        locked, nodes, digest="d",
        declared={"v1pack": [V1_NODE], "v3pack": [V3_NODE], "overridepack": [V3_NODE], "brokenpack": []},
        object_info=object_info, failed_imports=[str(nodes / "brokenpack"), "/elsewhere/brokenpack"],
    )  # fmt: skip
    states = {name: (s.state, s.problems, s.nodes) for name, s in report.packs.items()}
    assert states["v1pack"] == (OK, (), (V1_NODE,))
    assert states["v3pack"] == (
        "failed",
        (f"its node {V3_NODE} is overridden by node pack overridepack",),
        (),
    )
    assert states["overridepack"][:2] == ("failed", (f"it overrides node {V3_NODE} of node pack v3pack",))
    assert states["brokenpack"][0] == "failed" and "IMPORT FAILED" in states["brokenpack"][1][0]
    assert report.owner_of(V1_NODE) == report.packs["v1pack"]

    prompt = {"1": {"class_type": V1_NODE, "_meta": {"node_pack": {"name": "v1pack", "commit": "c1"}}}}
    prompt["2"] = {"class_type": "X", "_meta": {"node_pack": {"name": "gone", "commit": "c2"}}}
    prompt["3"] = {"class_type": V3_NODE, "_meta": {"node_pack": {"name": "v3pack", "commit": "c3"}}}
    assert needed_packs(prompt) == {"v1pack": "c1", "gone": "c2", "v3pack": "c3"}
    assert missing_packs(report, needed_packs(prompt)) == [
        "node pack gone is not installed (`darkroom nodes add SOURCE@c2`)",
        f"node pack v3pack is failed: its node {V3_NODE} is overridden by node pack overridepack",
    ]
