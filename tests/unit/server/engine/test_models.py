"""The manifest, and fetching model files with hash checks (from a loopback HTTP server)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from server.engine import models
from server.engine.models import ModelKind, load_manifest
from server.settings import load_settings


def test_manifest_loads_and_names_folders():
    manifest = load_manifest()
    entry = manifest.get("tiny-flux2-vae")
    assert entry.kind is ModelKind.VAE and entry.folder_name == "tiny/flux2-vae.safetensors"
    for name, item in manifest.models.items():
        assert item.file.split("/", 1)[0] in {"diffusion_models", "text_encoders", "vae", "loras"}, name
        assert item.source.generated != bool(item.source.hf or item.source.url), name


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="tiny-flux2-vae"):
        load_manifest().get("nope")


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _use_manifest(monkeypatch, tmp_path: Path, entries: dict) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    monkeypatch.setattr(models, "MANIFEST_PATH", path)
    monkeypatch.setattr(
        models, "load_manifest", lambda p=path: models.Manifest.model_validate(yaml.safe_load(p.read_text()))
    )


def _entry(sha: str, hf: str) -> dict:
    source = {"hf": hf}
    return {"file": "vae/real.safetensors", "kind": "vae", "family": "flux2", "source": source, "sha256": sha}


def test_fetch_downloads_verifies_and_is_idempotent(tmp_path, monkeypatch, file_server):
    root, url = file_server
    (root / "org" / "repo" / "resolve" / "main").mkdir(parents=True)
    payload = b"weights" * 1000
    (root / "org/repo/resolve/main/vae.safetensors").write_bytes(payload)
    _use_manifest(
        monkeypatch,
        tmp_path,
        {"real-vae": _entry(hashlib.sha256(payload).hexdigest(), "org/repo/vae.safetensors")},
    )
    settings = load_settings({}, data_dir=str(tmp_path / "data"), hf_endpoint=url)
    models.fetch(settings, ["real-vae"])
    target = settings.models_path / "vae/real.safetensors"
    assert target.read_bytes() == payload
    (root / "org/repo/resolve/main/vae.safetensors").unlink()  # a second fetch must not download again
    models.fetch(settings, ["real-vae"])


def test_fetch_with_wrong_hash_leaves_nothing_visible(tmp_path, monkeypatch, file_server):
    root, url = file_server
    (root / "org/repo/resolve/v1").mkdir(parents=True)
    (root / "org/repo/resolve/v1/vae.safetensors").write_bytes(b"tampered")
    _use_manifest(monkeypatch, tmp_path, {"real-vae": _entry("0" * 64, "org/repo/vae.safetensors@v1")})
    settings = load_settings({}, data_dir=str(tmp_path / "data"), hf_endpoint=url)
    with pytest.raises(models.FetchError, match="does not match"):
        models.fetch(settings, ["real-vae"])
    assert not list((settings.models_path / "vae").iterdir())


def test_fetch_of_an_unreachable_source_is_a_clear_error(tmp_path, monkeypatch, file_server):
    _, url = file_server
    _use_manifest(monkeypatch, tmp_path, {"real-vae": _entry("0" * 64, "org/repo/missing.safetensors")})
    settings = load_settings({}, data_dir=str(tmp_path / "data"), hf_endpoint=url)
    with pytest.raises(models.FetchError, match="404"):
        models.fetch(settings, ["real-vae"])
    assert not list((settings.models_path / "vae").iterdir())


def test_cli_expands_an_endpoint_into_its_model_files():
    from server.cli import expand_model_names

    names = expand_model_names(["fal-ai/flux-2", "flux2-vae"])
    assert names == ["flux2-dev-fp8mixed", "mistral3-small-flux2-fp8", "flux2-vae"]
    with pytest.raises(KeyError, match="nope"):
        expand_model_names(["nope"])


def test_missing_files_name_the_command_that_provides_each(tmp_path):
    from server.cli import expand_model_names
    from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints

    manifest = load_manifest()
    endpoints = load_endpoints(WORKFLOWS_DIR, manifest)
    settings = load_settings({}, data_dir=str(tmp_path / "data"))
    demo = endpoints["darkroom/demo-flux-2"].models.values()
    detail = manifest.missing_detail("darkroom/demo-flux-2", demo, settings.models_path)
    assert detail is not None and detail.endswith(": run `darkroom models make-tiny`.")
    assert all(manifest.get(n).file in detail for n in demo) and "models fetch" not in detail
    with pytest.raises(models.FetchError, match="make-tiny"):  # why fetch is not the command for them
        models.fetch(settings, expand_model_names(["darkroom/demo-flux-2"]))

    real = endpoints["fal-ai/flux-2"].models.values()
    detail = manifest.missing_detail("fal-ai/flux-2", real, settings.models_path)
    assert detail is not None and detail.endswith(": run `darkroom models fetch fal-ai/flux-2`.")
    mixed = manifest.missing_detail("x/y", ["tiny-flux2-vae", "flux2-vae"], settings.models_path)
    assert mixed is not None and mixed.endswith(
        "tiny/flux2-vae.safetensors: run `darkroom models make-tiny`; "
        "vae/flux2-vae.safetensors: run `darkroom models fetch flux2-vae`."
    )
    assert manifest.missing_detail("x/y", [], settings.models_path) is None
