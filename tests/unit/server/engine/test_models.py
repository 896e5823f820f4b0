"""The manifest: its entries, their folders and sources (fetching: test_fetch.py)."""

from __future__ import annotations

import pytest

from server.engine.fetch import fetch
from server.engine.models import FetchError, ModelKind, load_manifest
from server.settings import load_settings


def test_manifest_loads_and_names_folders():
    manifest = load_manifest()
    entry = manifest.get("tiny-flux2-vae")
    assert entry.kind is ModelKind.VAE and entry.folder_name == "tiny/flux2-vae.safetensors"
    for name, item in manifest.models.items():
        folders = {
            "diffusion_models", "text_encoders", "vae", "loras", "upscale_models", "safety_checkers",
            "checkpoints", "clip_vision", "audio_encoders",
        }  # fmt: skip
        assert item.file.split("/", 1)[0] in folders, name
        assert item.source.generated != bool(item.source.hf), name
        if item.source.hf:
            repo, path, _ = item.source.hf_parts
            # Real-ESRGAN's weights exist as the release's .pth only (ComfyUI reads it weights_only).
            pth = item.kind is ModelKind.UPSCALE_MODEL and path.endswith(".pth")
            assert repo.count("/") == 1 and (path.endswith(".safetensors") or pth), name


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="tiny-flux2-vae"):
        load_manifest().get("nope")


CHECKER = "nsfw-image-detection"  # the image endpoints' safety classifier


def test_cli_expands_an_endpoint_into_its_model_files():
    from functools import partial

    from server.cli import expand_model_names as expand
    from server.workflows.mapping import WORKFLOWS_DIR, load_endpoints

    endpoints = load_endpoints(WORKFLOWS_DIR, load_manifest())
    assert expand(["fal-ai/flux-2"]) == expand(["fal-ai/flux-2"], endpoints)
    expand_model_names = partial(expand, endpoints=endpoints)  # the workflows parsed once, not per call
    names = expand_model_names(["fal-ai/flux-2", "flux2-vae"])
    # The safety classifier too: enable_safety_checker is on by default.
    assert names == ["flux2-dev-fp8mixed", "mistral3-small-flux2-fp8", "flux2-vae", CHECKER]
    with pytest.raises(KeyError, match="nope"):
        expand_model_names(["nope"])
    # Issue 24's endpoints: exactly the files each needs (turbo: FLUX.2 [dev]'s and the Turbo LoRA).
    assert expand_model_names(["fal-ai/flux-2/edit"]) == expand_model_names(["fal-ai/flux-2"])
    assert expand_model_names(["fal-ai/flux-2/turbo/edit"]) == [
        "flux2-dev-fp8mixed", "mistral3-small-flux2-fp8", "flux2-vae", "flux2-dev-turbo-lora", CHECKER,
    ]  # fmt: skip
    assert expand_model_names(["fal-ai/flux-kontext-lora"]) == [
        "flux1-kontext-dev",
        "clip-l",
        "t5xxl-fp8",
        "flux1-ae",
        CHECKER,
    ]
    assert expand_model_names(["fal-ai/esrgan"]) == ["realesrgan-x4plus"]  # fal's ESRGAN has no checker
    z_image = ["z-image-turbo", "qwen3-4b", "flux1-ae", CHECKER]  # its VAE is FLUX.1's ae.safetensors
    for app in ("fal-ai/z-image/turbo", "fal-ai/z-image/turbo/lora", "fal-ai/z-image/turbo/image-to-image"):
        assert expand_model_names([app]) == z_image
    # SD 3.5: each size its own diffusion model, the same three text encoders and VAE.
    for size in ("large", "medium"):
        assert expand_model_names([f"fal-ai/stable-diffusion-v35-{size}"]) == [
            f"sd35-{size}", "clip-l", "clip-g", "t5xxl-fp8", "sd35-vae", CHECKER,
        ]  # fmt: skip
    # Qwen-Image: one text encoder and VAE for all; each mode its own diffusion model.
    shared = ["qwen25-vl-7b-fp8", "qwen-image-vae", CHECKER]
    for app in ("fal-ai/qwen-image", "fal-ai/qwen-image/image-to-image"):
        assert expand_model_names([app]) == ["qwen-image-fp8", *shared]
    for app in ("fal-ai/qwen-image-edit-2511", "fal-ai/qwen-image-edit-2511/lora"):
        assert expand_model_names([app]) == ["qwen-image-edit-2511-bf16", *shared]
    assert expand_model_names(["fal-ai/qwen-image-edit-plus"]) == ["qwen-image-edit-2509-fp8", *shared]


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
    with pytest.raises(FetchError, match="make-tiny"):  # why fetch is not the command for them
        fetch(settings, expand_model_names(["darkroom/demo-flux-2"]))

    turbo = endpoints["fal-ai/flux-2/turbo"].models.values()
    detail = manifest.missing_detail("fal-ai/flux-2/turbo", turbo, settings.models_path)
    assert detail is not None and "loras/flux.2-turbo-lora.safetensors" in detail
    assert detail.endswith(f": run `darkroom models fetch fal-ai/flux-2/turbo{_unpinned(manifest, turbo)}`.")

    real = endpoints["fal-ai/flux-2"].models.values()
    detail = manifest.missing_detail("fal-ai/flux-2", real, settings.models_path)
    assert detail is not None and detail.endswith(
        f": run `darkroom models fetch fal-ai/flux-2{_unpinned(manifest, real)}`."
    )
    mixed = manifest.missing_detail("x/y", ["tiny-flux2-vae", "flux2-vae"], settings.models_path)
    assert mixed is not None and mixed.endswith(
        "tiny/flux2-vae.safetensors: run `darkroom models make-tiny`; "
        "vae/flux2-vae.safetensors: run "
        f"`darkroom models fetch flux2-vae{_unpinned(manifest, ['flux2-vae'])}`."
    )
    assert manifest.missing_detail("x/y", [], settings.models_path) is None


def _unpinned(manifest, names) -> str:
    """What fetch needs for these entries: --unpinned while one of them pins no commit."""
    return "" if all(manifest.get(n).source.pinned for n in names) else " --unpinned"
