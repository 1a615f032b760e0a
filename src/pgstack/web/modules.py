"""pgstack's module routers, mounted the way `pgstack serve` mounts them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from pgstack.web.analytics import analytics_router
from pgstack.web.conversations import conversations_router
from pgstack.web.dashboard import dashboard_router
from pgstack.web.identity import identity_router, require_roles
from pgstack.web.tenancy import tenancy_router
from pgstack.web.tokens import tokens_router


def builtin_routers(admin_role: str = "admin", *, registration: bool = True) -> list[APIRouter]:
    """Identity (sign-up, sign-in, API keys, admin), tenants and their members, conversations
    and query analytics, the token vault's admin routes, `/admin/db`.

    The token routes manage credentials and the dashboard shows the database, so they need
    `admin_role`, like identity's admin routes. `registration=False` closes open sign-up.
    """
    return [
        identity_router(admin_role=admin_role, registration=registration),
        tenancy_router(admin_role=admin_role),
        conversations_router(),
        analytics_router(),
        tokens_router(dependencies=[Depends(require_roles(admin_role))]),
        dashboard_router(dependencies=[Depends(require_roles(admin_role))]),
    ]
