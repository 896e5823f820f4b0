"""Running one request: the generator (mapping -> graph -> worker -> stored output), live events
(queued, progress, previews, logs) and the hub that fans them out to subscribers. May import
``workflows``, ``media``, ``engine``, ``security`` and the foundation, never ``queue`` or ``api``.
"""
