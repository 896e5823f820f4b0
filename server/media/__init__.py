"""Files a request brings and makes: fetching input URLs and data URIs under the address policy, the
LoRA cache, uploads (single and multipart), and the output store; and the fleet bucket as a source of
model files (``model_share``). May import ``engine``, ``security`` and the foundation; independent of
``workflows``.
"""
