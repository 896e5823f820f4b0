"""What files and parameters look like, without ComfyUI (torch at most): safetensors headers and
streaming reads, architecture detection, FP8 quantisation, LoRA key names, override specs, and the
image and video encodings of outputs. Imports nothing else of the pack."""
