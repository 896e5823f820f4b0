"""Worker speed settings: what a host's settings ask for (``torch_compile``, ``fp8_matmul``,
``attention``), checked against the worker's Python environment once at start-up, and turned into
ComfyUI flags plus the variables the node pack reads.

- ``attention = sage | flash`` becomes ComfyUI's ``--use-sage-attention`` / ``--use-flash-attention``
  only when the package imports in the worker's interpreter: ComfyUI v0.8.0 exits at start-up when asked
  for one that is missing, so darkroom logs why and keeps PyTorch's attention instead (never a crash).
- ``fp8_matmul = auto`` (the default, as ComfyUI's own fp8 layers already do it) passes
  ``--fast fp8_matrix_mult`` on GPU workers: fp8 weights are multiplied in fp8 where the device can
  (compute capability >= 8.9; ComfyUI checks each device) and held as fp8, computed in bf16, elsewhere.
  ``off`` also tells the node pack's loaders to compute fp8 layers in bf16 (``DARKROOM_FP8_MATMUL``).
- ``torch_compile`` tells the node pack's loaders to wrap the diffusion model in ``torch.compile``
  (``DARKROOM_TORCH_COMPILE``); the worker logs the compile time at first use and every recompile.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.errors import ConfigError
from server.settings import Settings

logger = logging.getLogger(__name__)

ATTENTION_PACKAGES = {"sage": "sageattention", "flash": "flash_attn"}
ATTENTION_FLAGS = {"sage": "--use-sage-attention", "flash": "--use-flash-attention"}
ATTENTION_CHOICES = ("pytorch", *ATTENTION_PACKAGES)
FP8_MATMUL_CHOICES = ("auto", "off")
TORCH_COMPILE_BACKEND = "inductor"
_PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Speed:
    """What one worker runs with: its extra ComfyUI flags, the variables for the node pack, and the
    settings as shown on the dashboard and in /metrics."""

    flags: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)
    shown: Mapping[str, str] = field(default_factory=dict)


def check_choices(settings: Settings) -> None:
    """ConfigError naming the allowed values when a speed setting is not one of them."""
    for name, value, allowed in (
        ("attention", settings.attention, ATTENTION_CHOICES),
        ("fp8_matmul", settings.fp8_matmul, FP8_MATMUL_CHOICES),
    ):
        if value not in allowed:
            raise ConfigError(f"DARKROOM_{name.upper()}={value!r}: expected one of {', '.join(allowed)}")


def importable(python: str, packages: list[str]) -> dict[str, bool]:
    """Which of ``packages`` the interpreter ``python`` finds (without importing them: no GPU work)."""
    if not packages:
        return {}
    script = (
        "import importlib.util, json, sys; "
        "print(json.dumps({p: importlib.util.find_spec(p) is not None for p in sys.argv[1:]}))"
    )
    try:
        done = subprocess.run(
            [python, "-c", script, *packages], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S
        )
        found: dict[str, bool] = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        logger.warning("could not ask %s which packages it has (%s); taking them as missing", python, e)
        return dict.fromkeys(packages, False)
    return found


def plan_speed(settings: Settings, python: str, *, gpu: bool) -> Speed:
    """The speed settings a worker starts with, the attention package checked in its interpreter."""
    check_choices(settings)
    flags: list[str] = []
    environ: dict[str, str] = {"DARKROOM_FP8_MATMUL": settings.fp8_matmul}
    attention = settings.attention
    if attention in ATTENTION_PACKAGES:
        package = ATTENTION_PACKAGES[attention]
        if importable(python, [package]).get(package):
            flags.append(ATTENTION_FLAGS[attention])
        else:
            logger.warning(
                "DARKROOM_ATTENTION=%s asks for %s, but %s cannot import it; workers use PyTorch's "
                "attention (install it there with `%s -m pip install %s` and restart)",
                attention, package, python, python, package.replace("_", "-"),
            )  # fmt: skip
            attention = f"pytorch ({package} missing)"
    fp8 = settings.fp8_matmul
    if fp8 == "auto" and gpu:
        flags += ["--fast", "fp8_matrix_mult"]
        fp8 = "auto (fp8 files on compute capability >= 8.9)"
    elif fp8 == "auto":
        fp8 = "auto (none on CPU)"
    compile_ = "off"
    if settings.torch_compile:
        environ["DARKROOM_TORCH_COMPILE"] = TORCH_COMPILE_BACKEND
        compile_ = TORCH_COMPILE_BACKEND
    shown = {"attention": attention, "fp8_matmul": fp8, "torch_compile": compile_}
    return Speed(tuple(flags), environ, shown)
