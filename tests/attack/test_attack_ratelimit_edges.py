"""The limiter's edges: several windows, hostile keys and costs, the answer's numbers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import Depends, Request

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.orm import tenant_context
from pgstack.tenancy import RateLimiter
from pgstack.tenancy.ratelimit import InvalidRateLimitError
from pgstack.web import create_app
from pgstack.web.ratelimit import enforce_tenant_limit
from tests.tenancy.test_ratelimit import away_from_boundary


@pytest.fixture
def limiter(pgstack_migrated_db: Database) -> RateLimiter:
    return RateLimiter(pgstack_migrated_db)


@pytest.mark.parametrize("in_session", [False, True])
async def test_a_refusal_by_one_of_several_windows_is_on_the_exceeded_list(
    limiter: RateLimiter, pgstack_migrated_db: Database, in_session: bool
) -> None:
    # proves: N4
    # The exceeded list reads the refusals counted on each window. With several windows the
    # refused hit's counts were rolled back, and its refusal with them: the list never
    # showed a client refused by "2/minute; 100/hour".
    key = f"tenant:{uuid.uuid4()}:search"
    await away_from_boundary(60, 5)

    async def hit() -> bool:
        if not in_session:
            return (await limiter.hit(key, "2/minute; 100/hour")).allowed
        async with pgstack_migrated_db.transaction() as session:
            return (await limiter.hit(key, "2/minute; 100/hour", session=session)).allowed

    assert [await hit() for _ in range(4)] == [True, True, False, False]
    windows = {w.seconds: w for w in await limiter.usage(key)}
    assert (windows[60].hits, windows[60].refused) == (2, 2)
    # The hour window let the refused hits through on its own, but counted none of them.
    assert (windows[3600].hits, windows[3600].refused) == (2, 0)
    listed = [(w.key, w.seconds, w.refused) for w in await limiter.exceeded() if w.key == key]
    assert listed == [(key, 60, 2)]


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "tenant:a\n:search", "tenant:\x00", "tenant:\u202e:x", 7, None]
)
async def test_a_hostile_key_is_refused_before_any_statement(
    limiter: RateLimiter, key: object
) -> None:
    # proves: N4, I8
    with pytest.raises(InvalidRateLimitError):
        await limiter.hit(key, "5/minute")  # type: ignore[arg-type]


@pytest.mark.parametrize("cost", [0, -1, -(2**40), 2**40, 6, True, 1.5, "1"])
async def test_a_cost_that_cannot_count_is_refused(limiter: RateLimiter, cost: object) -> None:
    # proves: N4, I8
    key = f"k:{uuid.uuid4()}"
    with pytest.raises(InvalidRateLimitError):
        await limiter.hit(key, "5/minute", cost=cost)  # type: ignore[arg-type]
    assert await limiter.usage(key) == []


async def test_the_answer_inside_a_tenant_is_the_answer_outside(limiter: RateLimiter) -> None:
    # proves: N4, N2
    key = f"tenant:{uuid.uuid4()}:export"
    await away_from_boundary(60, 3)
    with tenant_context(uuid.uuid4()):
        inside = await limiter.hit(key, "1/minute; 10/hour")
        refused = await limiter.hit(key, "1/minute; 10/hour")
    outside = await limiter.hit(key, "1/minute; 10/hour")
    assert (inside.allowed, refused.allowed, outside.allowed) == (True, False, False)
    assert 0 < refused.retry_after <= 60 and refused.limit == 1 and refused.remaining == 0


async def test_a_tenant_named_with_a_colon_cannot_drain_another_key(
    pgstack_migrated_settings: Settings, limiter: RateLimiter
) -> None:
    # proves: N4, I8
    # The guide's own example takes the tenant from a header. "acme:export" as the tenant made
    # the plan's key "tenant:acme:export": the key the guide gives acme's export limit.
    settings = pgstack_migrated_settings.model_copy(
        update={"rate_limit_plans": {"free": "2/minute", "default": "2/minute"}}
    )
    app = create_app(settings, monitor_interval=None, routers=[])

    async def tenant_from_header(request: Request) -> str:
        tenant_id = request.headers.get("x-tenant", "public")
        await enforce_tenant_limit(request, tenant_id, plan_tier="free")
        return tenant_id

    @app.get("/ping", dependencies=[Depends(tenant_from_header)])
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    victim = f"acme{uuid.uuid4().hex[:8]}"
    await away_from_boundary(60, 5)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            hostile = [
                await c.get("/ping", headers={"x-tenant": f"{victim}:export"}) for _ in range(3)
            ]
            own = await c.get("/ping", headers={"x-tenant": victim})
    assert {a.status_code for a in hostile} == {422}, [a.text for a in hostile]
    assert own.status_code == 200, own.text
    result = await limiter.hit(f"tenant:{victim}:export", "2/minute")
    assert result.allowed and result.remaining == 1
