"""Writes on the read lane inside a tenant: a rate-limit hit, a sign-in, a counter.

The read lane makes a read carry the tenant by wrapping it, `SELECT * FROM (<read>) WHERE
(SELECT set_config(...)) IS NOT NULL`. A statement that writes (`INSERT ... ON CONFLICT ...
RETURNING`, `UPDATE ... RETURNING`) cannot be wrapped so: PostgreSQL refuses a data-modifying
statement as a subquery. Every such write made while a tenant was in context failed with a
syntax error (a 500 over HTTP): a tenant route that counts its own rate limit (the guide's
`tenant:<id>:export`), or that signs a user in again. They now run in a transaction that sets
the tenant first.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import bindparam, text

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.identity import Identity
from pgstack.orm import tenant_context
from pgstack.tenancy import RateLimiter
from pgstack.web import create_app
from pgstack.web.identity import identity_router
from pgstack.web.ratelimit import get_rate_limiter, rate_limit
from pgstack.web.tenancy import TenantAccessDep, tenancy_router
from tests.tenancy.conftest import STRONG, World, bearer, login, problem


def _app(settings: Settings) -> FastAPI:
    app = create_app(settings, monitor_interval=None, routers=[identity_router(), tenancy_router()])

    @app.post("/exports")
    async def export(
        access: TenantAccessDep, limiter: Annotated[RateLimiter, Depends(get_rate_limiter)]
    ) -> dict[str, int]:
        # The guide's own pattern: count the tenant's exports, in the tenant's request.
        result = await limiter.hit(f"tenant:{access.tenant.id}:export", "2/hour")
        if not result.allowed:
            raise result.error("export")
        return {"remaining": result.remaining}

    @app.get("/search")
    async def search(
        access: TenantAccessDep,
        _: Annotated[None, Depends(rate_limit("2/minute", resource="search"))],
    ) -> dict[str, str]:
        return {"tenant": str(access.tenant.id)}

    @app.post("/confirm")
    async def confirm(access: TenantAccessDep, request_password: str) -> dict[str, bool]:
        # Re-checking the password before a sensitive change, inside the tenant's request.
        identity = Identity(app.state.pgstack_tenancy.db)
        await identity.auth.login(access.principal.user.email, request_password)
        return {"ok": True}

    return app


@pytest.fixture
async def app_client(
    pgstack_migrated_settings: Settings, pgstack_migrated_db: Database
) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(pgstack_migrated_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_a_tenant_route_counts_its_own_rate_limit_without_a_500(
    app_client: httpx.AsyncClient, world: World
) -> None:
    # proves: N4, W2
    token = await login(app_client, world.member.email)
    answers = [
        await app_client.post("/exports", headers=bearer(token, world.a.id)) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
    assert [a.json()["remaining"] for a in answers[:2]] == [1, 0]
    assert problem(answers[2], 429)["violated-policies"] == ["export"]
    assert int(answers[2].headers["retry-after"]) >= 1


async def test_a_route_limit_declared_after_the_tenant_counts_without_a_500(
    app_client: httpx.AsyncClient, world: World
) -> None:
    # proves: N4, W2
    token = await login(app_client, world.member.email)
    answers = [await app_client.get("/search", headers=bearer(token, world.a.id)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
    assert answers[0].headers["ratelimit-policy"] == '"search";q=2;w=60'


async def test_signing_in_again_inside_a_tenant_request_works(
    app_client: httpx.AsyncClient, world: World
) -> None:
    # proves: I3, N2
    token = await login(app_client, world.member.email)
    ok = await app_client.post(
        "/confirm", params={"request_password": STRONG}, headers=bearer(token, world.a.id)
    )
    assert ok.status_code == 200, ok.text
    wrong = await app_client.post(
        "/confirm", params={"request_password": "not it at all"}, headers=bearer(token, world.a.id)
    )
    problem(wrong, 401)


async def test_a_counter_written_with_db_run_and_the_limiter_inside_a_tenant(
    pgstack_migrated_db: Database,
) -> None:
    # proves: N4, N2
    db = pgstack_migrated_db
    assert db.read_lane is not None
    limiter = RateLimiter(db)
    key = f"tenant:{uuid.uuid4()}:export"
    with tenant_context(uuid.uuid4()):
        first = await limiter.hit(key, "2/hour")
        second = await limiter.hit(key, "2/hour", cost=1)
        third = await limiter.hit(key, "2/hour")
        # The tenant is still what the lane's reads carry, on the same connections.
        seen = await db.read_lane.fetch("SELECT current_setting('pgstack.tenant_id', true)", ())
        (row,) = await db.run(
            text("SELECT current_setting('pgstack.tenant_id', true) = :t").bindparams(
                bindparam("t", str(uuid.uuid4()))
            )
        )
    assert [first.allowed, second.allowed, third.allowed] == [True, True, False]
    assert (await limiter.usage(key))[0].hits == 2
    assert seen[0][0] not in (None, "")
    assert row == (False,)
    # Outside the tenant, the lane's connections carry no tenant from those writes.
    after = await db.read_lane.fetch("SELECT current_setting('pgstack.tenant_id', true)", ())
    assert after[0][0] in (None, "")
