"""``/playground/``: every endpoint, with its model files present or missing; ``/playground/{app_id}``: a
form built from the endpoint's description (``GET /endpoints/{app_id}``) that runs it through the queue
over ``/ws`` (a token minted from the browser session), with progress, previews, logs, the images or
video, cancel, the request as JSON and as curl/Python/JS snippets, and this browser's past runs side by
side. Plain pages (``pages/playground*``), no build step; the browser session, a key, or open access.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.api import page_nav
from server.api.auth import page_access, self_authenticating
from server.api.described import operation
from server.api.state import ENDPOINTS
from server.errors import NotFoundError

_PAGES = Path(__file__).parent / "pages"
_INDEX = (_PAGES / "playground-index.html").read_text()
_ENDPOINT = (_PAGES / "playground.html").read_text()


def routes() -> list[web.RouteDef]:
    return [
        web.get("/playground", to_index),
        web.get("/playground/", index),
        web.get("/playground/{app_id:.+}", endpoint_page),
    ]


@self_authenticating
@operation(summary="The playground (redirect)", responses={308: "To /playground/"}, schemes=(), tag="pages")
async def to_index(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/playground/")


@self_authenticating
@operation(
    summary="The playground: every endpoint",
    ok="text/html",
    responses={200: "The page", 303: "Not signed in: the sign-in page"},
    schemes=("session", "key"),
    tag="pages",
)
async def index(request: web.Request) -> web.Response:
    page_access(request, page="/playground/")
    return page_nav.page(request, _INDEX)


@self_authenticating
@operation(
    summary="The playground for one endpoint",
    ok="text/html",
    responses={200: "The page", 303: "Not signed in: the sign-in page", 404: "Unknown endpoint"},
    schemes=("session", "key"),
    tag="pages",
)
async def endpoint_page(request: web.Request) -> web.Response:
    app_id = request.match_info["app_id"]
    page_access(request, page=f"/playground/{app_id}")
    endpoint = request.app[ENDPOINTS].get(app_id)
    if endpoint is None or endpoint.raw:
        raise NotFoundError(f"No endpoint {app_id!r}; /playground/ lists them")
    return page_nav.page(request, _ENDPOINT)
