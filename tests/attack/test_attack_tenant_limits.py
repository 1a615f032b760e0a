"""The per-tenant plan limit and the caller's tier limit, counted as callers meet them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.tenancy import RateLimiter
from pgstack.web import create_app
from pgstack.web.identity import identity_router
from pgstack.web.tenancy import TenantAccess, TenantAccessDep, require_tenant_role, tenancy_router
from tests.tenancy.conftest import World, bearer, login
from tests.tenancy.test_ratelimit import away_from_boundary

Admin = Annotated[TenantAccess, Depends(require_tenant_role("admin"))]


@pytest.fixture
async def limited(
    pgstack_migrated_settings: Settings, pgstack_migrated_db: Database
) -> AsyncIterator[httpx.AsyncClient]:
    settings = pgstack_migrated_settings.model_copy(
        update={"rate_limit_plans": {"default": "1000/minute", "free": "1000/minute"}}
    )
    app = create_app(settings, monitor_interval=None, routers=[identity_router(), tenancy_router()])

    @app.get("/both")
    async def both(access: TenantAccessDep, admin: Admin) -> dict[str, str]:
        # The guide's two dependencies in one route: the caller's tenant, and an admin guard.
        return {"role": admin.role}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def _tenant_hits(db: Database, world: World) -> int:
    windows = await RateLimiter(db).usage(f"tenant:{world.a.id}")
    return windows[0].hits if windows else 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/both"),
        ("GET", "/tenants/current"),
        ("GET", "/tenants/{a}"),
        ("PATCH", "/tenants/{a}"),
        ("GET", "/tenants/{a}/members"),
        ("DELETE", "/tenants/{a}/members/{member}"),
    ],
)
async def test_each_tenant_request_counts_once_against_the_plan(
    limited: httpx.AsyncClient,
    pgstack_migrated_db: Database,
    world: World,
    method: str,
    path: str,
) -> None:
    # proves: N4, W2
    token = await login(limited, world.owner.email)
    await away_from_boundary(60, 5)  # both counts in one minute window
    before = await _tenant_hits(pgstack_migrated_db, world)
    url = path.format(a=world.a.id, member=world.member.id)
    kwargs = {"json": {"name": "A again"}} if method == "PATCH" else {}
    answer = await limited.request(method, url, headers=bearer(token, world.a.id), **kwargs)
    assert answer.status_code in (200, 204), answer.text
    assert await _tenant_hits(pgstack_migrated_db, world) - before == 1
