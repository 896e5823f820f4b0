"""``GET /hosts``: the hosts serving this API, for an operator or a dashboard: a fleet's live hosts as
their last heartbeats left them (the apps each can run, the ones a worker has warm, its idle workers,
how long its lease has left), or this host alone when there is no fleet (its ``lease_left_s`` null)."""

from __future__ import annotations

from aiohttp import web

from server.api.access import requires
from server.api.described import operation
from server.api.state import ENDPOINTS, GENERATOR, QUEUE, SETTINGS, SUPERVISOR
from server.queue.fleet import capabilities_of
from server.security.roles import Role


def routes() -> list[web.RouteDef]:
    return [web.get("/hosts", hosts)]


@operation(
    summary="The hosts serving this API: a fleet's live hosts, or this one",
    responses={200: "The hosts", 503: "The fleet's database is unavailable: try again shortly"},
    tag="health",
)
@requires(Role.ADMIN)
async def hosts(request: web.Request) -> web.Response:
    fleet = request.app[QUEUE].fleet
    if fleet is not None:
        return web.json_response({"fleet": True, "hosts": await fleet.hosts()})
    served = request.app[ENDPOINTS]
    offer = capabilities_of(served, request.app[GENERATOR], request.app[SUPERVISOR])
    this = {
        "name": request.app[SETTINGS].host_name, "this_host": True,
        "apps": sorted(offer.apps), "warm": sorted(offer.warm), "idle_workers": offer.idle_workers,
        "lease_left_s": None,  # a lease is a fleet's: a host alone holds none
    }  # fmt: skip
    return web.json_response({"fleet": False, "hosts": [this]})
