"""Tiny random-weight models with the real architectures' key layouts, for tests and the CPU demo
(``python -m darkroom.tiny``). Apart from the pack: nothing imports it."""
