"""The durable queue: the job store protocol and its stores (SQLite; PostgreSQL for a fleet), the
order requests run in (priority, then arrival), running them on the generator with retries, retention,
and webhooks (signed, retried, surviving restarts). May import ``generation`` and the layers below,
never ``api``.
"""
