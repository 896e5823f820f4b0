"""Workflow mappings: the YAML files that turn a fal-style request into a ComfyUI API graph, the
request models built from them, finding and validating an endpoint's input, and the sampler and
scheduler names read from ComfyUI. May import ``engine`` (the manifest, the client) and the foundation.
"""
