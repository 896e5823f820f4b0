"""v3 node classes, one module per family of nodes; each exports ``NODES``. Node IDs carry the
``Darkroom`` prefix and are a public API: never rename one. May import ``ops`` and ``formats``."""
