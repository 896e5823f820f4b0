"""The `darkroom` command: serve, comfyui install, models make-tiny / fetch / list / verify / import,
workflows. Logging is set up here only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from server.api import malformed
from server.app import create_app, job_store
from server.engine import fetch, install, model_lock, models, node_packs
from server.engine.pack_check import PackReport
from server.engine.pack_watch import STATUS_NAME
from server.engine.supervisor import Supervisor
from server.errors import ConfigError, DarkroomError
from server.media import model_share
from server.queue.accounts import Accounts
from server.queue.fleet_packs import FleetPacks
from server.queue.postgres_store import PostgresJobStore
from server.security.keyring import KeyRing, check_exposure
from server.security.roles import Limits, Role, check_apps, check_name
from server.security.untrusted import LogFormatter
from server.settings import Settings, load_settings
from server.workflows.mapping import WORKFLOWS_DIR, Endpoint, load_endpoints

logger = logging.getLogger(__name__)
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darkroom", description="fal-compatible server in front of ComfyUI workers."
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO).")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Run the fal-compatible server and its ComfyUI workers.")
    serve.add_argument("--host", help="Listen address (DARKROOM_HOST, default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Listen port (DARKROOM_PORT, default 8000).")
    serve.add_argument("--workers", type=int, help="ComfyUI workers; 0 = one per GPU (DARKROOM_WORKERS).")
    serve.add_argument("--cpu", action="store_true", help="Run the workers on CPU (DARKROOM_DEVICE=cpu).")
    serve.add_argument("--data-dir", help="Models, outputs and worker state (DARKROOM_DATA_DIR).")
    serve.add_argument("--tls-cert", help="PEM certificate: serve https/wss (DARKROOM_TLS_CERT).")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert (DARKROOM_TLS_KEY).")

    comfyui = commands.add_parser("comfyui", help="Manage the pinned ComfyUI install.")
    comfyui_commands = comfyui.add_subparsers(dest="action", required=True)
    comfyui_commands.add_parser("install", help="Install ComfyUI and its requirements; print its path.")

    model_parser = commands.add_parser("models", help="Manage model files.")
    model_commands = model_parser.add_subparsers(dest="action", required=True)
    model_commands.add_parser("make-tiny", help="Build the tiny random-weight test models.")
    fetch_parser = model_commands.add_parser(
        "fetch", help="Download the named manifest entries (verified; from the fleet's bucket first)."
    )
    fetch_parser.add_argument("names", nargs="+", help="Endpoint ids (all their models) or manifest entries.")
    fetch_parser.add_argument(
        "--unpinned", action="store_true", help="Allow entries without a pinned commit (take main as it is)."
    )
    listing = model_commands.add_parser("list", help="Model files: present, missing, size, verified.")
    listing.add_argument("names", nargs="*", help="Endpoint ids or manifest entries (default: all).")
    verify = model_commands.add_parser("verify", help="Hash the present files again (a mismatch is deleted).")
    verify.add_argument("names", nargs="*", help="Endpoint ids or manifest entries (default: all).")
    importing = model_commands.add_parser(
        "import", help="Bring in model files copied from elsewhere, verified."
    )
    importing.add_argument("path", help="A file, or a folder (searched for the manifest's file names).")

    nodes = commands.add_parser(
        "nodes", help="Third-party ComfyUI node packs, locked (node_packs.yaml in the data dir)."
    )
    nodes.add_argument("--data-dir", help="The data dir whose packs these are (DARKROOM_DATA_DIR).")
    node_commands = nodes.add_subparsers(dest="action", required=True)
    adding = node_commands.add_parser("add", help="Install and lock a pack (its code runs in the workers).")
    adding.add_argument("source", help="SOURCE[@REV]: a git URL or local git repository; commit, tag, branch")
    adding.add_argument("--name", help="The pack's folder name (default: the source's last path segment).")
    node_commands.add_parser("remove", help="Unlock and delete a pack.").add_argument("name")
    node_commands.add_parser("list", help="The locked packs and their state in the workers.")
    node_commands.add_parser("sync", help="Install exactly the lock's packs (after copying a lock here).")

    workflows = commands.add_parser("workflows", help="Publish workflows to a running server; list them.")
    _server_options(workflows, default=None)
    workflow_commands = workflows.add_subparsers(dest="action", required=True)
    publish = workflow_commands.add_parser("publish", help="Publish an API-format workflow as an endpoint.")
    publish.add_argument("file", help="The editor's API export, or a JSON object {prompt, workflow}.")
    publish.add_argument("--name", required=True, help="owner/name: the endpoint's app id.")
    _server_options(publish)
    _server_options(workflow_commands.add_parser("list", help="List the published workflows and their URLs."))
    _keys_parser(commands)
    return parser


def _keys_parser(commands: Any) -> None:
    """``darkroom keys create|list|revoke|rotate|limits``: managed keys, in the job store (a running
    server, or every host of a fleet, sees a change within a second)."""
    keys = commands.add_parser("keys", help="Manage API keys with roles (no restart needed).")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="Create a key; its secret is printed once.")
    create.add_argument("--name", required=True, help="The key's name (also its user id).")
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.RUNNER.value)
    create.add_argument("--apps", nargs="*", default=[], help="App patterns it may call, e.g. 'fal-ai/*'.")
    limited = [create, actions.add_parser("limits", help="Set a key's limits (omitted: unlimited).")]
    limited[1].add_argument("name")
    for parser in limited:
        parser.add_argument("--rate-per-min", type=int, help="Requests per minute.")
        parser.add_argument("--max-concurrent", type=int, help="Requests queued or running at once.")
        parser.add_argument("--monthly-gpu-s", type=float, help="GPU-seconds per calendar month (UTC).")
        parser.add_argument(
            "--monthly-usd", type=float, help="USD per calendar month (UTC) at DARKROOM_GPU_HOURLY_USD."
        )
    actions.add_parser("list", help="The keys (no secrets).").add_argument("--revoked", action="store_true")
    actions.add_parser("revoke", help="Revoke a key.").add_argument("name")
    actions.add_parser("rotate", help="Give a key a new secret (printed once).").add_argument("name")


def _server_options(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """--url and --key, before or after the workflows subcommand (a subcommand's are left out of the
    namespace when not given, so they do not undo the ones given before it)."""
    parser.add_argument(
        "--url", default=default, help="The server (default: DARKROOM_HOST and DARKROOM_PORT on this host)."
    )
    parser.add_argument(
        "--key", default=default, help="One of the server's API keys (default: $FAL_KEY, as fal's SDKs)."
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """DARKROOM_* variables, with the flags that were given on top."""
    return load_settings(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        device="cpu" if getattr(args, "cpu", False) else None,
        data_dir=getattr(args, "data_dir", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
    )


def expand_model_names(names: Sequence[str], endpoints: Mapping[str, Endpoint] | None = None) -> list[str]:
    """Endpoint ids stand for every model file they bind, their safety classifier included (the field is
    on by default); other names are manifest entries. `endpoints`: the loaded set, when the caller has it."""
    manifest = models.load_manifest()
    if endpoints is None:
        endpoints = load_endpoints(WORKFLOWS_DIR, manifest)
    expanded: list[str] = []
    for name in names:
        if name in endpoints:
            expanded += endpoints[name].models.values()
            expanded += [spec.checker for spec in endpoints[name].params.values() if spec.checker]
        else:
            manifest.get(name)  # raises KeyError naming the known entries
            expanded.append(name)
    return list(dict.fromkeys(expanded))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``darkroom`` script."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    # One line per record, control characters escaped: a request's newline never forges a log line.
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    logging.captureWarnings(True)  # a library's warning is a record too, not a stray line
    settings = settings_from(args)
    try:
        if args.command == "serve":
            return asyncio.run(serve(settings))
        if args.command == "workflows":
            return asyncio.run(workflows_command(args, settings))
        if args.command == "nodes":
            return nodes_command(args, settings)
        if args.command == "keys":
            return asyncio.run(keys_command(args, settings))
        if args.command == "comfyui":
            print(install.ensure_comfyui(settings))
            return 0
        if args.action == "make-tiny":
            mismatched = models.make_tiny(settings, install.ensure_comfyui(settings))
            if mismatched:
                logger.warning("generated models differ from the manifest hashes: %s", ", ".join(mismatched))
            return 0
        return models_command(args, settings)
    except (DarkroomError, install.ComfyInstallError, models.FetchError, subprocess.SubprocessError) as e:
        logger.error("%s", e)
        return 1
    except (KeyError, OSError, ValueError) as e:
        logger.error("%s", e)
        return 1


async def keys_command(args: argparse.Namespace, settings: Settings) -> int:
    """``darkroom keys ...`` on the job store of ``settings`` (SQLite file, or the fleet's database)."""
    store = job_store(settings)
    await store.open()
    try:
        accounts, name = Accounts(store), getattr(args, "name", "")
        limits = Limits(
            *(
                getattr(args, f, None)
                for f in ("rate_per_min", "max_concurrent", "monthly_gpu_s", "monthly_usd")
            )
        )
        if args.action == "list":
            for record in await accounts.keys(revoked=args.revoked):
                print(json.dumps(record.public()))
            return 0
        if args.action == "create":
            role, apps = Role(args.role), check_apps(args.apps)
            secret = await accounts.issue(check_name(name), role, apps, limits, time.time())
            done = secret is not None
        elif args.action == "limits":
            secret, done = None, await accounts.set_limits(name, limits)
        elif args.action == "revoke":
            secret, done = None, await accounts.revoke(name, time.time())
        else:
            secret = await accounts.rotate_secret(name)
            done = secret is not None
    finally:
        await store.close()
    if not done:
        what = "a valid key has that name" if args.action == "create" else "no valid key has that name"
        raise ConfigError(f"darkroom keys {args.action} {name}: {what} (darkroom keys list)")
    print(secret if secret is not None else f"{args.action}: {name}")
    return 0


def models_command(args: argparse.Namespace, settings: Settings) -> int:
    """``darkroom models fetch|list|verify|import``."""
    manifest = models.load_manifest()
    names = expand_model_names(getattr(args, "names", None) or list(manifest.models))
    if args.action == "fetch":
        with model_share.opened(settings) as shared:
            fetched = fetch.fetch(settings, names, manifest=manifest, shared=shared, unpinned=args.unpinned)
        logger.info("fetched %d files; %d were present", len(fetched), len(names) - len(fetched))
        return 0
    if args.action == "list":
        table = [("name", "file", "state", "size", "verified"), *model_lock.rows(settings, manifest, names)]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0
    if args.action == "verify":
        problems = model_lock.verify(settings, manifest, names)
        for problem in problems:
            logger.error("%s", problem)
        return 1 if problems else 0
    imported = model_lock.import_path(settings, manifest, Path(args.path))
    logger.info("imported %d files: %s", len(imported), ", ".join(imported) or "none")
    return 0


def nodes_command(args: argparse.Namespace, settings: Settings) -> int:
    """``darkroom nodes add|remove|list|sync``: a running server on this data dir follows the lock (it
    restarts its workers one at a time and verifies the packs; ``list`` shows what it found)."""
    share, fleet_lock = None, None
    if url := settings.database_url:  # a fleet: its database holds the lock every host converges to

        def share(packs: Mapping[str, node_packs.LockedPack]) -> None:
            asyncio.run(_on_fleet(url, lambda fleet: fleet.write(packs)))

        fleet_lock = asyncio.run(_on_fleet(url, FleetPacks.read))
    installer = node_packs.Installer(settings, share=share)
    if args.action == "add":
        pack = installer.add(args.source, args.name)
        print(f"added {pack.name} at {pack.commit} ({', '.join(pack.requirements) or 'no new requirements'})")
    elif args.action == "remove":
        print(f"removed {installer.remove(args.name).name}")
    elif args.action == "sync":
        print(f"installed: {', '.join(installer.sync(fleet_lock)) or 'nothing (all present)'}")
    else:
        report = PackReport.load(settings.data_path / STATUS_NAME)
        locked = installer.locked()
        verified = report.digest == node_packs.lock_digest(locked)
        for pack in locked.values():
            state = report.packs.get(pack.name) if verified else None
            shown = state.state if state else "pending (not yet verified by a running server)"
            problems = f"  {'; '.join(state.problems)}" if state and state.problems else ""
            print(f"{pack.name}  {pack.commit[:12]}  {shown}  {pack.source}{problems}")
        return 1 if any(p.state != "ok" for p in report.packs.values()) and verified else 0
    return 0


async def _on_fleet(url: str, call: Callable[[FleetPacks], Awaitable[T]]) -> T:
    """``call`` on the fleet's node-pack lock, its database opened for it and closed after."""
    store = PostgresJobStore(url)
    await store.open()
    try:
        return await call(FleetPacks(store))
    finally:
        await store.close()


async def workflows_command(args: argparse.Namespace, settings: Settings) -> int:
    """``darkroom workflows publish|list`` against a running server's /workflows API."""
    scheme = "https" if settings.tls_cert else "http"
    url = (args.url or f"{scheme}://{settings.host}:{settings.port}").rstrip("/")
    key = args.key or os.environ.get("FAL_KEY")  # a client credential, not a server setting
    headers = {"Authorization": f"Key {key}"} if key else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        if args.action == "list":
            async with http.get(f"{url}/workflows") as response:
                body = await response.json()
            if response.status != 200:
                logger.error("GET /workflows: %s %s", response.status, body.get("detail"))
                return 1
            for entry in body["workflows"]:
                versions = f"version {entry['version']} of {entry['versions']}"
                print(f"{entry['name']}  {versions}  {entry['urls']['run']}")
            return 0
        async with http.post(f"{url}/workflows", json=publish_body(Path(args.file), args.name)) as response:
            body = await response.json()
        if response.status != 201:
            logger.error("publishing %s failed (%s): %s", args.name, response.status, body.get("detail"))
            return 1
        print(f"published {body['app_id']}\n  run:   {body['urls']['run']}\n  queue: {body['urls']['queue']}")
        return 0


def publish_body(path: Path, name: str) -> dict[str, Any]:
    """The POST /workflows body from a file holding the API-format prompt, or {prompt, workflow}."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        return {"name": name, "prompt": data["prompt"], "workflow": data.get("workflow")}
    return {"name": name, "prompt": data}


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; 0 after a clean shutdown, 1 if the workers cannot start."""
    keys = KeyRing.from_settings(settings)  # refuse a bad set-up before anything starts
    check_exposure(settings.host, has_keys=not keys.open, open_access=settings.open_access)
    ssl_context = tls_context(settings)
    # Requirements are installed by `darkroom comfyui install` (make setup), not on every start.
    comfyui_dir = await asyncio.to_thread(install.ensure_comfyui, settings, install_requirements=False)
    app = create_app(settings, Supervisor(settings, comfyui_dir))
    runner = malformed.runner(app, keepalive_timeout_s=settings.client_timeout_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # starts the supervisor (workers boot in the background)
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context)
        await site.start()
        logger.info("listening on %s; starting ComfyUI workers", site.name)
        return await _until_stopped(app, site.name, stop)
    finally:
        await runner.cleanup()  # stops the workers
        logger.info("darkroom stopped")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context for tls_cert/tls_key, or None to serve plain http."""
    if not (settings.tls_cert or settings.tls_key):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("TLS needs both a certificate and its key: set --tls-cert and --tls-key.")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"Cannot load TLS certificate {settings.tls_cert} with key {settings.tls_key}: {e}"
        ) from e
    return context


async def _until_stopped(app: web.Application, url: str, stop: asyncio.Event) -> int:
    from server.api.state import SUPERVISOR

    ready = asyncio.create_task(app[SUPERVISOR].wait_ready())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        if ready.exception() is not None:
            stopped.cancel()
            logger.error("ComfyUI workers failed to start: %s", ready.exception())
            return 1
        logger.info("darkroom ready at %s", url)
        await stopped
    else:
        ready.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ready
    logger.info("shutting down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
