"""darkroom's facade: fal-compatible HTTP API in front of supervised ComfyUI workers."""
