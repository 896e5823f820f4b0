"""Fetching model files through huggingface_hub from a loopback fake hub (tests/fake_hub.py): verified
against the hub's LFS sha256 before they get their names, resumed after a dropped connection, with
clear errors for gated files, missing revisions and a full disk; a fleet's second host takes the file
from the S3 bucket, not the hub. No traffic leaves loopback."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http

from server.engine import fetch as fetch_module
from server.engine import hub, model_lock
from server.engine.fetch import fetch
from server.engine.models import FetchError, Manifest
from server.engine.worker import free_port
from server.media import model_share
from server.settings import Settings, load_settings
from tests.fake_hub import FakeHub, HubFile, running_hub

COMMIT = "3f1e5d7c9b2a4e6f8d0c1b3a5e7f9d2c4b6a8e0f"
REPO = "org/weights"
MIB = 1 << 20


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    with running_hub() as served:
        yield served


def _payload(size: int = MIB, seed: bytes = b"w") -> bytes:
    block = hashlib.sha256(seed).digest()
    return (block * (size // len(block) + 1))[:size]


def _manifest(source: str, **pins: object) -> Manifest:
    entry = {"file": "vae/real.safetensors", "kind": "vae", "family": "flux2", "source": {"hf": source}}
    return Manifest.model_validate({"models": {"real-vae": {**entry, **pins}}})


def _settings(tmp_path: Path, hub_url: str, host: str = "a", **extra: str) -> Settings:
    return load_settings({}, data_dir=str(tmp_path / host), hf_endpoint=hub_url, **extra)


def test_a_good_fetch_is_verified_recorded_and_logs_progress(tmp_path, fake_hub, monkeypatch, caplog):
    payload = _payload(2 * MIB)
    source = fake_hub.add(REPO, COMMIT, "split_files/vae/real.safetensors", HubFile(payload))
    fake_hub.chunk_delay_s = 0.02  # 32 chunks: about 0.6 s, so the watcher sees the file grow
    monkeypatch.setattr(hub, "PROGRESS_INTERVAL_S", 0.1)
    caplog.set_level(logging.INFO)
    settings = _settings(tmp_path, fake_hub.url)

    assert fetch(settings, ["real-vae"], manifest=_manifest(source)) == ["real-vae"]

    target = settings.models_path / "vae/real.safetensors"
    assert target.read_bytes() == payload
    locked = model_lock.Lock(settings.models_path).entries()["real-vae"]
    assert (locked.sha256, locked.size_bytes, locked.revision, locked.source) == (
        hashlib.sha256(payload).hexdigest(), len(payload), COMMIT, "hub",
    )  # fmt: skip
    progress = [m for m in caplog.messages if re.match(r"vae/real.safetensors: [\d.]+ of 2.0 MiB", m)]
    assert any(not m.endswith(("(0%)", "(100%)")) for m in progress), caplog.messages
    assert not (settings.models_path / ".fetch" / "real-vae").exists()
    assert sum(r.sent_bytes for r in fake_hub.gets()) == len(payload)

    requests_before = len(fake_hub.requests)
    assert fetch(settings, ["real-vae"], manifest=_manifest(source)) == []  # present: the hub is not asked
    assert len(fake_hub.requests) == requests_before
    assert model_lock.verify(settings, _manifest(source), ["real-vae"]) == []
    assert list(model_lock.rows(settings, _manifest(source), ["real-vae"]))[0][2:] == (
        "present", "0.00 GiB", "yes",
    )  # fmt: skip


def test_bytes_that_do_not_match_the_hubs_sha256_are_refused_and_removed(tmp_path, fake_hub):
    payload = _payload()
    claimed = hashlib.sha256(b"the file that was meant").hexdigest()
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(payload, advertised_sha256=claimed))
    settings = _settings(tmp_path, fake_hub.url)

    with pytest.raises(FetchError) as raised:
        fetch(settings, ["real-vae"], manifest=_manifest(source))

    got = hashlib.sha256(payload).hexdigest()
    assert f"sha256 {got} arrived, the hub (X-Linked-Etag) says {claimed}" in str(raised.value)
    assert not (settings.models_path / "vae/real.safetensors").exists()
    assert not (settings.models_path / ".fetch" / "real-vae").exists()  # no bad bytes kept to resume from
    assert "real-vae" not in model_lock.Lock(settings.models_path).entries()


def test_a_manifest_pin_the_hub_contradicts_is_refused_before_downloading(tmp_path, fake_hub):
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    settings = _settings(tmp_path, fake_hub.url)
    with pytest.raises(FetchError, match="the manifest pins 0000"):
        fetch(settings, ["real-vae"], manifest=_manifest(source, sha256="0" * 64))
    assert fake_hub.gets() == []


def test_a_connection_dropped_half_way_resumes_where_it_stopped(tmp_path, fake_hub):
    # huggingface_hub writes what it reads in DOWNLOAD_CHUNK_SIZE pieces (10 MB): a drop loses at most
    # the piece in flight, and the next try asks for the rest with a Range from what the file holds.
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE
    payload = _payload(2 * chunk + MIB)
    dropped_at = chunk + MIB
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(payload))
    fake_hub.drop_first_get_after = dropped_at
    settings = _settings(tmp_path, fake_hub.url)

    fetch(settings, ["real-vae"], manifest=_manifest(source, size_bytes=len(payload)))

    assert (settings.models_path / "vae/real.safetensors").read_bytes() == payload
    gets = fake_hub.gets()
    assert [(g.range, g.sent_bytes) for g in gets] == [
        (None, dropped_at), (f"bytes={chunk}-", len(payload) - chunk),
    ]  # fmt: skip
    assert sum(g.sent_bytes for g in gets) == len(payload) + MIB  # the whole file once, plus the lost piece


def test_a_gated_file_without_a_token_names_darkroom_hf_token(tmp_path, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored `hf auth login` token either
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload(), gated_token="hf_secret"))
    with pytest.raises(FetchError, match="gated.*set DARKROOM_HF_TOKEN"):
        fetch(_settings(tmp_path, fake_hub.url), ["real-vae"], manifest=_manifest(source))
    assert fake_hub.gets() == []

    with_token = _settings(tmp_path, fake_hub.url, hf_token="hf_secret")
    assert fetch(with_token, ["real-vae"], manifest=_manifest(source)) == ["real-vae"]


def test_a_missing_revision_is_a_clear_error(tmp_path, fake_hub):
    fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    source, other = f"{REPO}/vae.safetensors", "0" * 40
    with pytest.raises(FetchError, match=f"revision {other} is not in {REPO} at .*fix the @revision"):
        fetch(
            _settings(tmp_path, fake_hub.url),
            ["real-vae"],
            manifest=_manifest(f"{source}@{other}"),
        )


def test_an_unpinned_entry_needs_unpinned_and_records_the_commit_it_resolved_to(tmp_path, fake_hub):
    fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    fake_hub.refs["main"] = COMMIT
    settings = _settings(tmp_path, fake_hub.url)
    manifest = _manifest(f"{REPO}/vae.safetensors")
    with pytest.raises(FetchError, match="pins no commit.*--unpinned"):
        fetch(settings, ["real-vae"], manifest=manifest)
    fetch(settings, ["real-vae"], manifest=manifest, unpinned=True)
    assert model_lock.Lock(settings.models_path).entries()["real-vae"].revision == COMMIT


def test_the_command_a_missing_file_names_is_one_fetch_takes(tmp_path, fake_hub):
    """A 503 or the pages name a fetch for a missing file: pinned or not, that exact command fetches it."""
    fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    fake_hub.refs["main"] = COMMIT
    for host, source in (
        ("pinned", f"{REPO}/vae.safetensors@{COMMIT}"),
        ("unpinned", f"{REPO}/vae.safetensors"),
    ):
        settings, manifest = _settings(tmp_path, fake_hub.url, host), _manifest(source)
        detail = manifest.missing_detail("org/app", ["real-vae"], settings.models_path)
        command = re.search(r"run `(darkroom models fetch [^`]+)`", detail or "")
        assert command is not None
        words = command[1].split()
        assert words[:4] == ["darkroom", "models", "fetch", "org/app"] and set(words[4:]) <= {"--unpinned"}
        assert (host == "unpinned") == ("--unpinned" in words)
        fetch(settings, ["real-vae"], manifest=manifest, unpinned="--unpinned" in words)
        assert manifest.missing_detail("org/app", ["real-vae"], settings.models_path) is None


def test_not_enough_disk_space_is_refused_naming_the_numbers(tmp_path, fake_hub, monkeypatch):
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 1000})())
    with pytest.raises(FetchError, match=rf"1 files need {MIB} bytes .*, 1000 bytes .* free at .*MODELS_DIR"):
        fetch(_settings(tmp_path, fake_hub.url), ["real-vae"], manifest=_manifest(source))
    assert fake_hub.gets() == []


def test_a_second_host_takes_the_file_from_the_bucket_not_the_hub(tmp_path, fake_hub, storage_url, s3_server):
    payload = _payload(3 * MIB)
    sha256 = hashlib.sha256(payload).hexdigest()
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(payload))
    manifest = _manifest(source, sha256=sha256, size_bytes=len(payload))
    first = _settings(tmp_path, fake_hub.url, "a", storage_url=storage_url)
    with model_share.opened(first) as shared:
        fetch(first, ["real-vae"], manifest=manifest, shared=shared)
    assert s3_server.keys(storage_url) == [f"models/sha256/{sha256}"]
    hub_requests = len(fake_hub.requests)

    second = _settings(tmp_path, fake_hub.url, "b", storage_url=storage_url)
    with model_share.opened(second) as shared:
        fetch(second, ["real-vae"], manifest=manifest, shared=shared)

    assert (second.models_path / "vae/real.safetensors").read_bytes() == payload
    assert len(fake_hub.requests) == hub_requests  # the hub was not asked at all
    assert model_lock.Lock(second.models_path).entries()["real-vae"].source == "bucket"
    assert s3_server.keys(storage_url) == [f"models/sha256/{sha256}"]  # put once


def test_a_bad_copy_in_the_bucket_is_refused_and_the_hub_used(tmp_path, fake_hub, storage_url, s3_server):
    payload = _payload()
    sha256 = hashlib.sha256(payload).hexdigest()
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(payload))
    bucket, _, prefix = storage_url.removeprefix("s3://").partition("/")
    s3_server.client().put_object(
        Bucket=bucket, Key=f"{prefix}/models/sha256/{sha256}", Body=b"x" * len(payload)
    )
    settings = _settings(tmp_path, fake_hub.url, storage_url=storage_url)
    with model_share.opened(settings) as shared:
        fetch(
            settings,
            ["real-vae"],
            manifest=_manifest(source, sha256=sha256, size_bytes=len(payload)),
            shared=shared,
        )
    assert (settings.models_path / "vae/real.safetensors").read_bytes() == payload
    assert model_lock.Lock(settings.models_path).entries()["real-vae"].source == "hub"


def test_verify_deletes_a_file_that_changed_and_names_both_hashes(tmp_path, fake_hub):
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    settings = _settings(tmp_path, fake_hub.url)
    manifest = _manifest(source)
    fetch(settings, ["real-vae"], manifest=manifest)
    target = settings.models_path / "vae/real.safetensors"
    expected = hashlib.sha256(target.read_bytes()).hexdigest()
    with target.open("r+b") as f:
        f.write(b"bitrot")
    got = hashlib.sha256(target.read_bytes()).hexdigest()

    problems = model_lock.verify(settings, manifest, ["real-vae"])

    assert len(problems) == 1 and f"sha256 {got} arrived" in problems[0] and expected in problems[0]
    assert not target.exists() and "real-vae" not in model_lock.Lock(settings.models_path).entries()


def test_import_links_in_verified_files_and_refuses_others(tmp_path, fake_hub):
    source = fake_hub.add(REPO, COMMIT, "vae.safetensors", HubFile(_payload()))
    connected = _settings(tmp_path, fake_hub.url, "connected")
    fetch(connected, ["real-vae"], manifest=_manifest(source))
    air_gapped = _settings(tmp_path, "http://127.0.0.1:9", "air-gapped")  # no hub reachable

    imported = model_lock.import_path(air_gapped, _manifest(source), connected.models_path)

    assert imported == ["real-vae"]
    placed = air_gapped.models_path / "vae/real.safetensors"
    assert placed.samefile(connected.models_path / "vae/real.safetensors")  # a hard link, no copy
    assert model_lock.Lock(air_gapped.models_path).entries()["real-vae"].source == "import"

    stray = tmp_path / "usb" / "real.safetensors"
    stray.parent.mkdir()
    stray.write_bytes(b"not the weights")
    pinned = _manifest(source, sha256=hashlib.sha256(_payload()).hexdigest())
    with pytest.raises(FetchError, match="arrived, the manifest says"):
        model_lock.import_path(_settings(tmp_path, "http://127.0.0.1:9", "other"), pinned, stray)
    assert not (tmp_path / "other/models/vae/real.safetensors").exists()
    with pytest.raises(FetchError, match="cannot be verified"):
        model_lock.import_path(_settings(tmp_path, "http://127.0.0.1:9", "other"), _manifest(source), stray)


def test_an_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_http.time, "sleep", lambda _: None)  # the library's back-off: 23 s of waits
    source = f"{REPO}/vae.safetensors@{COMMIT}"
    with pytest.raises(FetchError, match="DARKROOM_HF_ENDPOINT or HF_ENDPOINT"):
        nowhere = _settings(tmp_path, f"http://127.0.0.1:{free_port()}")
        fetch(nowhere, ["real-vae"], manifest=_manifest(source))


def test_hf_endpoint_is_read_when_darkroom_hf_endpoint_is_unset():
    assert load_settings({"HF_ENDPOINT": "http://mirror.invalid"}).hf_endpoint == "http://mirror.invalid"
    both = {"HF_ENDPOINT": "http://mirror.invalid", "DARKROOM_HF_ENDPOINT": "http://ours.invalid"}
    assert load_settings(both).hf_endpoint == "http://ours.invalid"


def test_the_command_lists_fetches_and_verifies(tmp_path, monkeypatch, capsys):
    from server.cli import main

    monkeypatch.setenv("DARKROOM_DATA_DIR", str(tmp_path / "data"))
    assert main(["models", "list", "fal-ai/flux-2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "file", "state", "size", "verified"]
    names = ["flux2-dev-fp8mixed", "mistral3-small-flux2-fp8", "flux2-vae", "nsfw-image-detection"]
    assert [line.split()[0] for line in lines[1:]] == names
    assert all(line.split()[2:] == ["missing", "?", "no"] for line in lines[1:])
    assert main(["models", "fetch", "flux2-vae"]) == 1  # not pinned: refused before any traffic
    assert main(["models", "verify"]) == 0
