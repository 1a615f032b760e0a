"""pgstack's module routers, mounted the way `pgstack serve` mounts them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from pgstack.web.identity import identity_router, require_roles
from pgstack.web.tokens import tokens_router


def builtin_routers(admin_role: str = "admin") -> list[APIRouter]:
    """Identity (sign-up, sign-in, API keys, admin) and the token vault's admin routes.

    The token routes manage credentials, so they need `admin_role`, like identity's admin
    routes.
    """
    return [
        identity_router(admin_role=admin_role),
        tokens_router(dependencies=[Depends(require_roles(admin_role))]),
    ]
