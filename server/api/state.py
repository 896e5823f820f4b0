"""Typed keys for what the app and each request carry: set by ``create_app``, read by the routes."""

from __future__ import annotations

from aiohttp import web

from server.api.metrics import Metrics
from server.api.proxy import EditorProxy
from server.engine.inventory import ModelInventory
from server.engine.pack_watch import PackWatch
from server.engine.supervisor import Supervisor
from server.generation.generator import Generator
from server.generation.progress import ProgressHub
from server.media.multipart import MultipartStore
from server.media.objects import ObjectStore
from server.media.uploads import UploadStore
from server.queue.accounts import Accounts
from server.queue.job_queue import JobQueue
from server.queue.limits import Limiter
from server.queue.meter import Meter
from server.security.keyring import KeyRing
from server.security.roles import Caller
from server.settings import Settings
from server.workflows.catalog import Catalog
from server.workflows.mapping import Endpoint

SETTINGS = web.AppKey("settings", Settings)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
KEYS = web.AppKey("keys", KeyRing)
HUB = web.AppKey("progress_hub", ProgressHub)
ENDPOINTS = web.AppKey("endpoints", dict[str, Endpoint])
CATALOG = web.AppKey("catalog", Catalog)
GENERATOR = web.AppKey("generator", Generator)
QUEUE = web.AppKey("job_queue", JobQueue)
UPLOADS = web.AppKey("uploads", UploadStore)
MULTIPART = web.AppKey("multipart", MultipartStore)
OBJECTS = web.AppKey("objects", ObjectStore)  # only with DARKROOM_STORAGE_URL
EDITOR = web.AppKey("editor", EditorProxy)
METRICS = web.AppKey("metrics", Metrics)
INVENTORY = web.AppKey("inventory", ModelInventory)
PACKS = web.AppKey("node_packs", PackWatch)
ACCOUNTS = web.AppKey("accounts", Accounts)  # managed keys and usage, in the job store
METER = web.AppKey("meter", Meter)
LIMITER = web.AppKey("limiter", Limiter)
REQUEST_ID = web.RequestKey("request_id", str)
# Set by authentication when the key names a user; queue requests' webhooks are signed with it.
USER_ID = web.RequestKey("user_id", str)
# Set by authentication: who the request comes from (its key's name, role, apps and limits).
CALLER = web.RequestKey("caller", Caller)
