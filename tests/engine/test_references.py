"""Reference-image nodes: every input has a tooltip; DarkroomLoadImages hands 1 to 3 input-folder images
to image1..image3 (the slots past the list's end empty) and refuses more or none."""

from __future__ import annotations

from pathlib import Path

import folder_paths
import pytest
import torch
from darkroom.nodes import references
from PIL import Image


def test_every_input_has_a_tooltip() -> None:
    for node in references.NODES:
        schema = node.define_schema()
        assert all(i.tooltip for i in schema.inputs), schema.node_id


def test_load_images_fills_the_slots_in_order(tmp_path: Path) -> None:
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        for name, size, colour in (("a.png", (8, 6), "red"), ("b.png", (4, 4), "blue")):
            Image.new("RGB", size, colour).save(tmp_path / name)
        first, second, third = references.DarkroomLoadImages.execute('["a.png", "b.png"]').args
        assert first.shape == (1, 6, 8, 3) and second.shape == (1, 4, 4, 3) and third is None
        assert torch.allclose(first[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
        (only, *rest) = references.DarkroomLoadImages.execute("b.png").args
        assert only.shape == (1, 4, 4, 3) and rest == [None, None]
        for too_many in ("[]", '["a.png", "a.png", "a.png", "a.png"]'):
            with pytest.raises(ValueError, match="1 to 3"):
                references.DarkroomLoadImages.execute(too_many)
    finally:
        folder_paths.set_input_directory(previous)
