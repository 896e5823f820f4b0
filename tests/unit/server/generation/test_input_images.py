"""Input images are checked before any worker sees them: size from the header (bombs), then every pixel."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server.errors import InputError
from server.generation.generator import _image_size


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((width, height), 64).convert("RGB").save(out, "PNG")  # noise: compresses poorly
    return out.getvalue()


def test_a_whole_image_passes() -> None:
    assert _image_size(png(48, 32), "image_url", 10_000) == (48, 32)


@pytest.mark.parametrize("cut", [200, 2000])
def test_a_truncated_image_is_refused_though_its_header_reads(cut: int) -> None:
    data = png(64, 64)
    with Image.open(io.BytesIO(data[:-cut])) as image:
        assert image.size == (64, 64)  # what reading the header alone would have accepted
    with pytest.raises(InputError, match="image_url: not a complete image: decoding it failed") as caught:
        _image_size(data[:-cut], "image_url", 10_000)
    assert caught.value.status == 422


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(InputError, match="DARKROOM_INPUT_MAX_PIXELS"):
        _image_size(png(64, 64), "image_url", 1000)
