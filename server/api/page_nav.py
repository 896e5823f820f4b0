"""darkroom's pages as the signed-in key's role sees them: a nav link (or any element) marked
``data-role="developer"`` or ``data-role="admin"`` is left out of the page for a role below it, so a
runner's playground shows neither the dashboard nor the editor. The server refuses those pages and
their routes regardless (``server.api.access``); this only spares the user links that answer 403.
"""

from __future__ import annotations

import re

from aiohttp import web

from server.api.auth import caller_of
from server.security.roles import Role

# One element with no nested element of its own tag: the nav's <a> links (and <button>s).
_MARKED = re.compile(r'<(a|button)\b[^>]*\bdata-role="(developer|admin)"[^>]*>.*?</\1>', re.DOTALL)


def for_role(html: str, role: Role) -> str:
    """``html`` without the marked elements above ``role``."""
    return _MARKED.sub(lambda m: m.group(0) if role.covers(Role(m.group(2))) else "", html)


def page(request: web.Request, html: str) -> web.Response:
    """A page for the request's caller (after ``auth.page_access``), never cached (the role may change)."""
    text = for_role(html, caller_of(request).role)
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})
