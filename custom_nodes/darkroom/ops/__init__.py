"""The work behind the nodes, on ComfyUI's model classes: diffusion-model, text-encoder and VAE
loaders (FP8 included), LoRA stacks, model blends, sampler and scheduler overrides. May import
ComfyUI and ``formats``, never ``nodes``."""
