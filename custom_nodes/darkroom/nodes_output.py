"""Output nodes: files the facade serves, described with what it needs (size, content type)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from .media import FORMATS, encode_image


class DarkroomSaveImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DarkroomSaveImage",
            display_name="Darkroom Save Image",
            category="darkroom",
            description="Save images as png, jpeg or webp without embedded metadata, for the API to serve.",
            inputs=[
                io.Image.Input("images", tooltip="The images to save."),
                io.String.Input("filename_prefix", default="darkroom", tooltip="Prefix (may hold a subfolder)."),
                io.Combo.Input("format", options=list(FORMATS), default="png", tooltip="File format."),
                io.Int.Input("quality", default=95, min=1, max=100, tooltip="jpeg/webp quality; png ignores it."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, filename_prefix: str, format: str, quality: int) -> io.NodeOutput:  # noqa: A002
        height, width = int(images.shape[1]), int(images.shape[2])
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height
        )
        extension = "jpg" if format == "jpeg" else format
        results = []
        for index, image in enumerate(images):
            file_name = f"{name}_{counter + index:05}_.{extension}"
            data = encode_image(image.cpu().float().numpy(), format, quality=quality)
            with open(os.path.join(folder, file_name), "wb") as f:
                f.write(data)
            results.append({
                "filename": file_name, "subfolder": subfolder, "type": "output",
                "width": width, "height": height, "content_type": FORMATS[format],
            })
        return io.NodeOutput(ui={"images": results})


NODES: list[type[io.ComfyNode]] = [DarkroomSaveImage]
