"""Typed keys for what the app and each request carry, shared by the app and its route modules."""

from __future__ import annotations

from aiohttp import web

from .settings import Settings
from .supervisor import Supervisor

SETTINGS = web.AppKey("settings", Settings)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
REQUEST_ID = web.RequestKey("request_id", str)
# Set by authentication when the key names a user; queue requests' webhooks are signed with it.
USER_ID = web.RequestKey("user_id", str)
