"""Which key role a route needs: ``@requires(Role.ADMIN)`` on a handler. Unmarked handlers need
``runner`` (any valid key). ``server.api.auth`` enforces it for every authenticated request (403 naming
the role needed and the key's), and the OpenAPI document names it (``x-darkroom-role``).

A new admin-only route is one decorator::

    @operation(summary="...", responses={200: "..."}, tag="...")
    @requires(Role.ADMIN)
    async def handler(request: web.Request) -> web.Response: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from server.security.roles import Role

F = TypeVar("F")
_ROLE_ATTR = "_darkroom_role"


def requires(role: Role) -> Callable[[F], F]:
    """Mark a handler only ``role`` and the roles above it may call (unmarked handlers: ``runner``)."""

    def mark(handler: F) -> F:
        setattr(handler, _ROLE_ATTR, role)
        return handler

    return mark


def required_role(handler: object) -> Role:
    """The least role a handler accepts."""
    role = getattr(handler, _ROLE_ATTR, Role.RUNNER)
    return role if isinstance(role, Role) else Role.RUNNER
