"""Write ``tests/unit/server/workflows/fal_outputs.yaml``: fal's output shapes for the endpoints that
``fal_fields.py`` lists, read from the catalog in ``../shared/docs/fal-catalog/``.

The catalog writes an endpoint's output as ``OUT Name{ field:type; ... }`` and, on the lines below it,
the nested types it names (``File{ url:string!; ... }``). Written per endpoint: the answer's fields, and
for each field whose type is one of those nested file types, that type's fields. Left out: fal's
``file_data`` (its inline bytes; darkroom's sync_mode answers a data URI in ``url``, as fal's does) and
the catalog's ``description:!`` artefacts.

    .venv/bin/python scripts/fal_outputs.py [CATALOG_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fal_fields import _HEADING, ENDPOINTS, ROOT  # noqa: E402

OUT = ROOT / "tests/unit/server/workflows/fal_outputs.yaml"
_OUTPUT = re.compile(r"^\s*OUT\s+\w+\{ (?P<body>.*) \}\s*$")
_NESTED = re.compile(r"^\s{6}(?P<name>\w+)\{ (?P<body>.*) \}\s*$")
_SKIPPED = ("file_data", "description")


def _fields(body: str) -> dict[str, str]:
    """name -> type text of each ``name:type`` entry (the skipped ones left out)."""
    pairs = (part.partition(":") for part in body.split("; ") if part.strip())
    return {name.strip(): kind.strip() for name, _, kind in pairs if name.strip() not in _SKIPPED}


def read_outputs(folder: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """endpoint id -> (its OUT line's body, its nested types' bodies by name); the first entry wins."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for path in sorted(folder.glob("schemas_*.txt")):
        endpoint: str | None = None
        for line in path.read_text().splitlines():
            if match := _HEADING.match(line):
                endpoint = match["id"] if match["id"] not in found else None
            elif endpoint and (out := _OUTPUT.match(line)):
                found[endpoint] = (out["body"], {})
            elif endpoint in found and (nested := _NESTED.match(line)):
                found[endpoint][1][nested["name"]] = nested["body"]
    return found


def build(folder: Path) -> dict[str, Any]:
    catalog = read_outputs(folder)
    # fal's TypeScript-only entries name their file types (VideoFile, ImageFile) without listing them:
    # such a name is read from the first entry that lists it.
    shared: dict[str, str] = {}
    for _, nested in catalog.values():
        shared = nested | shared
    out: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        body, nested = catalog[endpoint]
        fields = _fields(body)
        files = {}
        for name, kind in fields.items():
            type_name = re.sub(r"^(ref:|array ref:|array )", "", kind).rstrip("!")
            if type_name in (types := shared | nested):
                files[name] = sorted(_fields(types[type_name]))
        out[endpoint] = {"output": sorted(fields), "files": files}
    return out


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/docs/fal-catalog"
    header = (
        "# fal's output fields per endpoint and the fields of its file types, derived from\n"
        "# ../shared/docs/fal-catalog/ by scripts/fal_outputs.py (do not edit by hand: run it again).\n"
    )
    OUT.write_text(
        header + yaml.safe_dump(build(folder), sort_keys=False, width=110, default_flow_style=None)
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
