"""The engine: installing the pinned ComfyUI, the model files (manifest, fetch through huggingface_hub,
the lock file of verified hashes, tiny builds), the worker processes and their supervisor, and the
HTTP/WebSocket client with its event parsing. Talks to ComfyUI only over its API (no torch here).
May import only the foundation (``settings``, ``errors``).
"""
