"""Write ``tests/unit/server/workflows/fal_fields.yaml``: fal's input field lists for the endpoints
darkroom serves or is about to, read from the catalog in ``../shared/docs/fal-catalog/``.

The catalog (its README says how it was made) writes one endpoint per ``###`` heading and its input as
``IN Name{ field:type [bounds] default=value; ... }``. Entries from fal's zod types carry bounds;
``[TS only: aug]`` entries come from the TypeScript types alone and carry defaults but no bounds, so
those entries are written with ``bounds_known: false``.

    .venv/bin/python scripts/fal_fields.py [CATALOG_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/unit/server/workflows/fal_fields.yaml"
ENDPOINTS = (
    "fal-ai/flux-2", "fal-ai/flux-2/lora", "fal-ai/flux-2/edit", "fal-ai/flux-2/lora/edit",
    "fal-ai/flux-2/turbo", "fal-ai/flux-2/turbo/edit", "fal-ai/flux-kontext/dev", "fal-ai/flux-kontext-lora",
    "fal-ai/esrgan", "fal-ai/z-image/turbo", "fal-ai/z-image/turbo/lora",
    "fal-ai/z-image/turbo/image-to-image",
    "fal-ai/qwen-image", "fal-ai/qwen-image/image-to-image", "fal-ai/qwen-image-edit-2511",
    "fal-ai/qwen-image-edit-2511/lora", "fal-ai/qwen-image-edit-plus", "fal-ai/stable-diffusion-v35-large",
    "fal-ai/stable-diffusion-v35-medium",
    "fal-ai/wan/v2.2-5b/text-to-video", "fal-ai/wan/v2.2-a14b/text-to-video",
    "fal-ai/wan/v2.2-a14b/image-to-video",
    "fal-ai/ltx-2-19b/text-to-video", "fal-ai/ltx-2-19b/image-to-video",
    "fal-ai/ltx-2-19b/distilled/text-to-video", "fal-ai/ltx-2-19b/distilled/image-to-video",
    "fal-ai/ltx-2-19b/text-to-video/lora", "fal-ai/ltx-2-19b/image-to-video/lora",
    "fal-ai/hunyuan-video-v1.5/text-to-video", "fal-ai/hunyuan-video-v1.5/image-to-video",
    "fal-ai/flux-2-trainer", "fal-ai/flux-lora-fast-training", "fal-ai/z-image-trainer",
    "fal-ai/qwen-image-trainer",
    "fal-ai/wan/v2.2-a14b/text-to-video/lora", "fal-ai/wan/v2.2-a14b/image-to-video/lora",
    "fal-ai/wan/v2.2-a14b/video-to-video", "fal-ai/wan/v2.2-a14b/text-to-image",
    "fal-ai/wan/v2.2-14b/speech-to-video",
)  # fmt: skip
_HEADING = re.compile(r"^### (?P<id>\S+) \[(?P<kind>[^\]]+)\]")
_INPUT = re.compile(r"^\s*IN\s+\w+\{ (?P<body>.*) \}\s*$")
_BOUND = re.compile(r"\[(?:(?:gte|lte|gt|lt) -?[\d.]+(?:, )?)+\]")
_PRESETS = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9")


def read_catalog(folder: Path) -> dict[str, tuple[str, str]]:
    """endpoint id -> (its heading's kind, its IN line's body), for every entry of every schemas file."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.glob("schemas_*.txt")):
        heading: re.Match[str] | None = None
        for line in path.read_text().splitlines():
            if match := _HEADING.match(line):
                heading = match
            elif heading and (body := _INPUT.match(line)):
                found.setdefault(heading["id"], (heading["kind"], body["body"]))
                heading = None
    return found


def parse_field(text: str) -> tuple[str, dict[str, Any]]:
    """One ``name:type [bounds] default=value`` entry as (name, {type, required, default, ge, le, values})."""
    name, _, rest = text.partition(":")
    field: dict[str, Any] = {}
    rest, _, default = rest.partition("default=")
    if default:
        field["default"] = _value(default.removesuffix("(ts)"))
    if bounds := _BOUND.search(rest):
        for part in bounds[0].strip("[]").split(", "):
            key, number = part.split(" ")
            field[{"gte": "ge", "lte": "le", "gt": "gt", "lt": "lt"}[key]] = _value(number)
        rest = rest.replace(bounds[0], "")
    field["type"] = _type(rest.strip(), field, name)
    if "!" in rest.split("ref:")[0] or rest.strip().endswith("!"):
        field["required"] = True
    return name.strip(), field


def _type(text: str, field: dict[str, Any], name: str) -> str:
    enum = re.search(r"enum\[([^\]]+)\]", text) or re.search(
        r"^\|?\s*([\w\" .:()-]+(?:\|[\w\" .:()-]+)+)$", text
    )
    if name == "image_size" or "ImageSize" in text:
        if enum:
            # The catalog cuts long unions short ("landscape_"): a prefix of a preset is that preset.
            extra = [
                v
                for v in _choices(enum[1])
                if v != "ImageSize" and not any(p.startswith(v) for p in _PRESETS)
            ]
            if extra:
                field["presets_extra"] = extra
        return "image_size"
    if name == "seed":
        return "seed"
    if name == "loras":
        return "loras"
    if name == "image_urls":
        return "image_urls"
    if name in ("video_url", "audio_url"):
        return name
    if name.endswith("data_url"):  # a trainer's zip of images (image_data_url, training_data_url)
        return "archive_url"
    if name.endswith("_url"):
        return "image_url"
    if not text:
        return "string"  # a field the types give only a default for (a string, in every entry read)
    if enum:
        field["values"] = _choices(enum[1])
        return "enum"
    if text.startswith(("array", "Array")):
        return "array"
    if text.startswith("ref:"):
        field["ref"] = text.removeprefix("ref:")
        return "object"  # one of fal's structured inputs (ControlNet, IP-Adapter): a JSON object
    head = re.split(r"[\s!\[|]", text, maxsplit=1)[0]
    return {"int": "integer", "string": "string", "number": "number", "boolean": "boolean"}.get(head, head)


def _choices(text: str) -> list[str]:
    return [part.strip().strip('"') for part in re.split(r"\|", text) if part.strip()]


def _value(text: str) -> Any:
    text = text.strip()
    if text.endswith('",'):  # the catalog ends some long quoted defaults with a stray comma (LTX-2's)
        text = text[:-1]
    return yaml.safe_load(text)


def build(folder: Path) -> dict[str, Any]:
    catalog = read_catalog(folder)
    out: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        kind, body = catalog[endpoint]
        ts_only = kind.startswith("TS only")
        source = (
            "endpoints.ts 381105e (TypeScript types: defaults only, no bounds)"
            if ts_only
            else "zod.gen.ts 5324132 (zod types: defaults and bounds)"
        )
        fields = dict(parse_field(part) for part in body.split("; "))
        out[endpoint] = {"source": source, "bounds_known": not ts_only, "fields": fields}
    return out


def _entry(endpoint: str, entry: dict[str, Any]) -> str:
    """One endpoint, a field to a line."""
    lines = [
        f"{endpoint}:",
        f"  source: {entry['source']!r}",
        f"  bounds_known: {str(entry['bounds_known']).lower()}",
    ]
    lines.append("  fields:")
    for name, field in entry["fields"].items():
        lines.append(f"    {name}: " + yaml.safe_dump(field, default_flow_style=True, width=1000).strip())
    return "\n".join(lines) + "\n"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/docs/fal-catalog"
    header = (
        "# fal's input fields per endpoint, derived from ../shared/docs/fal-catalog/\n"
        "# by scripts/fal_fields.py (do not edit by hand: run it again). `source` says which of fal's\n"
        "# generated client types each entry follows; bounds_known: false marks an entry whose source\n"
        "# carries no bounds. Where they and fal's live docs disagree the docs win (not reachable here).\n"
    )
    OUT.write_text(header + "".join(_entry(endpoint, entry) for endpoint, entry in build(folder).items()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
