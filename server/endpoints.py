"""Placeholder: the fal-compatible run routes are added here."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register the endpoint routes on the app."""
