"""How much memory a LoRA training run needs, estimated before it starts (pure arithmetic: no ComfyUI).

The run holds four things at once:

- the base weights, frozen, as loaded: ``parameters x weight bytes`` (fp8 1, bf16 2, fp32 4);
- the adapters: a rank-r LoRA on a d x d linear layer has 2rd parameters, so ``2 x rank x parameters /
  width`` in all (``width`` the model's hidden size), each held four times in the LoRA dtype (weights,
  gradients and AdamW's two moments);
- the activations: ``tokens x width x training bytes`` per saved hidden state. With gradient
  checkpointing each of the model's blocks keeps its input (``blocks`` of them, about ``parameters / (12
  x width^2)``: a transformer block's attention and MLP) and one block at a time holds its whole
  forward pass again (``BLOCK_ACTIVATIONS`` hidden states: q, k, v, attention output, the 4x MLP);
  without it every block keeps its whole forward pass;
- ``OVERHEAD`` on top of the sum: the allocator's fragmentation, ComfyUI's own buffers, the optimizer's
  temporaries.

It is an estimate for refusing what clearly cannot fit (a 422 before any GPU work), not a promise that
what passes fits: the README's training section gives the figures for an 80 GB GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_ACTIVATIONS = 24  # hidden states one transformer block's forward and backward pass hold at once
BLOCK_PARAMETERS_PER_WIDTH_SQUARED = 12  # attention 4d^2 + a 4x MLP 8d^2
OVERHEAD = 1.2
GIB = 1024**3


@dataclass(frozen=True)
class TrainingRun:
    parameters: int  # the diffusion model's
    width: int  # its hidden size
    weight_bytes: float  # per base parameter as loaded
    rank: int
    batch: int
    tokens_per_image: int  # the latent's patches
    training_bytes: int = 2  # bf16 activations
    lora_bytes: int = 2  # bf16 adapters
    gradient_checkpointing: bool = True


@dataclass(frozen=True)
class Estimate:
    weights_bytes: float
    adapters_bytes: float
    activations_bytes: float

    @property
    def total_bytes(self) -> float:
        return OVERHEAD * (self.weights_bytes + self.adapters_bytes + self.activations_bytes)

    def describe(self) -> str:
        return (
            f"about {self.total_bytes / GIB:.2f} GiB (base weights {self.weights_bytes / GIB:.2f} GiB, "
            f"LoRA adapters and optimizer {self.adapters_bytes / GIB:.2f} GiB, activations "
            f"{self.activations_bytes / GIB:.2f} GiB, plus {OVERHEAD - 1:.0%})"
        )


def estimate(run: TrainingRun) -> Estimate:
    width = max(run.width, 1)
    blocks = max(1.0, run.parameters / (BLOCK_PARAMETERS_PER_WIDTH_SQUARED * width**2))
    adapter_parameters = 2 * run.rank * run.parameters / width
    hidden_state = run.batch * run.tokens_per_image * width * run.training_bytes
    kept = blocks + BLOCK_ACTIVATIONS if run.gradient_checkpointing else blocks * BLOCK_ACTIVATIONS
    return Estimate(
        weights_bytes=run.parameters * run.weight_bytes,
        adapters_bytes=adapter_parameters * 4 * run.lora_bytes,
        activations_bytes=hidden_state * kept,
    )


def refusal(run: TrainingRun, available_bytes: float, device: str) -> str | None:
    """Why the run does not fit in ``available_bytes`` of ``device`` ("GPU (cuda:0)"; None if it fits)."""
    needed = estimate(run)
    if needed.total_bytes <= available_bytes:
        return None
    return (
        f"this training run does not fit in the worker's {device}: at rank {run.rank}, batch {run.batch} "
        f"and {run.tokens_per_image} latent tokens per image on a model of {run.parameters / 1e9:.3g} B "
        f"parameters it needs {needed.describe()}, and {available_bytes / GIB:.2f} GiB are available. "
        "Lower the resolution, the rank or the batch size."
    )
