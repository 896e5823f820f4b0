"""Third-party node packs for the tests, each built as a local git repository (no network): a V1 pack
(with a web extension and a prestartup script), a V3 pack, one needing a package served from a local
wheel, one failing to import, one overriding the V3 pack's node id, one requiring an old torch."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

V1_NODE = "DarkroomTestInvert"
V3_NODE = "DarkroomTestScale"
WHEEL_NODE = "DarkroomTestWheelValue"
DEP = "darkroom-testpack-dep"

_V1 = '''import os

WEB_DIRECTORY = "./web"


class Invert:
    """Inverts an image."""

    DESCRIPTION = "prestartup ran: " + os.environ.get("V1PACK_PRESTARTUP", "no")
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "darkroom tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return (1.0 - image,)


NODE_CLASS_MAPPINGS = {"NODE_ID": Invert}
'''.replace("NODE_ID", V1_NODE)

_V3 = """from comfy_api.latest import ComfyExtension, io


class Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="NODE_ID", category="darkroom tests",
                         inputs=[io.Float.Input("value")], outputs=[io.Float.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value * 2)


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [Scale]


async def comfy_entrypoint():
    return Extension()
""".replace("NODE_ID", V3_NODE)

_WHEEL = """import darkroom_testpack_dep


class Value:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "darkroom tests"
    DESCRIPTION = f"value {darkroom_testpack_dep.VALUE}"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return (darkroom_testpack_dep.VALUE,)


NODE_CLASS_MAPPINGS = {"NODE_ID": Value}
""".replace("NODE_ID", WHEEL_NODE)

_OVERRIDE = """class Other:
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "darkroom tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT",)}}

    def run(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {"NODE_ID": Other}
""".replace("NODE_ID", V3_NODE)

PACKS: dict[str, dict[str, str]] = {
    "v1pack": {
        "__init__.py": _V1,
        "prestartup_script.py": 'import os\nos.environ["V1PACK_PRESTARTUP"] = "yes"\n',
        "web/v1pack.js": "// darkroom test pack's editor extension\n",
    },
    "v3pack": {"__init__.py": _V3},
    "wheelpack": {"__init__.py": _WHEEL, "requirements.txt": f"{DEP}==1.0.0\n"},
    "brokenpack": {"__init__.py": 'raise ImportError("brokenpack needs a module that is not there")\n'},
    "overridepack": {"__init__.py": _OVERRIDE},
    "torchpack": {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n", "requirements.txt": "torch<2\n"},
}


def _git(folder: Path, *args: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@localhost", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def build_pack(root: Path, name: str) -> Path:
    """The pack ``name`` as a git repository under ``root`` (one commit); its path."""
    folder = root / name
    for relative, text in PACKS[name].items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    _git(folder, "init", "--quiet")
    _git(folder, "add", ".")
    _git(folder, "commit", "--quiet", "-m", f"{name} 1")
    return folder


def commit_change(folder: Path, relative: str, text: str) -> str:
    """Commit a changed file; the new commit."""
    (folder / relative).write_text(text)
    _git(folder, "commit", "--quiet", "-am", "change")
    return _git(folder, "rev-parse", "HEAD")


def build_wheel(folder: Path) -> Path:
    """``darkroom-testpack-dep`` 1.0.0 as a wheel in ``folder`` (a pure-Python module, VALUE = 42)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = "darkroom_testpack_dep-1.0.0"
    files = {
        "darkroom_testpack_dep/__init__.py": "VALUE = 42\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {DEP}\nVersion: 1.0.0\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path
