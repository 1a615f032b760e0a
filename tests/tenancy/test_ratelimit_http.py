"""Rate limits over HTTP: 429 problem details with headers, tiers, plans, the OpenAPI document."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy
from pgstack.web import create_app
from pgstack.web.identity import CurrentUser, identity_router
from pgstack.web.ratelimit import RateLimitPolicies, enforce_tenant_limit, rate_limit
from pgstack.web.tenancy import TenantAccessDep

from .test_ratelimit import away_from_boundary

PASSWORD = "violet Harbour 42 lanterns drift"
PROBLEM = "application/problem+json"
AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def build_app(settings: Settings) -> FastAPI:
    app = create_app(settings, monitor_interval=None, routers=[identity_router()])

    @app.get("/search", dependencies=[Depends(rate_limit("2/minute", resource="search"))])
    async def search(user: CurrentUser) -> dict[str, str]:
        return {"email": user.email}

    @app.get("/public", dependencies=[Depends(rate_limit("2/minute", resource="pub", per="ip"))])
    async def public() -> dict[str, bool]:
        return {"ok": True}

    @app.post(
        "/workspaces/{tenant_id}/exports",
        dependencies=[Depends(rate_limit("2/minute", resource="export", per="tenant"))],
    )
    async def workspace_export(access: TenantAccessDep) -> dict[str, str]:
        return {"tenant": str(access.tenant.id)}

    @app.get("/tenants/{tenant_id}/ping")
    async def tenant_ping(tenant_id: uuid.UUID, plan: str, request: Request) -> dict[str, int]:
        result = await enforce_tenant_limit(request, tenant_id, plan)
        return {"remaining": -1 if result is None else result.remaining}

    return app


@pytest.fixture
def app_client(pgstack_migrated_settings: Settings) -> AppClient:
    @asynccontextmanager
    async def client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = pgstack_migrated_settings.model_copy(update=overrides)
        app = build_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                yield c

    return client


@pytest.fixture
async def bob(pgstack_migrated_db: Database) -> User:
    return await Identity(pgstack_migrated_db).users.create("bob@example.com", PASSWORD)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_429(response: httpx.Response, policy: str, quota: int, window: int) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == 429 and body["title"] == "Too many requests"
    assert body["violated-policies"] == [policy]
    assert "retry after" in body["detail"]
    wait = int(response.headers["retry-after"])
    # Windows are UTC-aligned: the wait is what is left of the current one, rounded up.
    left = math.ceil(window - time.time() % window)
    assert wait in (left, left + 1), (wait, left)
    assert response.headers["ratelimit-policy"] == f'"{policy}";q={quota};w={window}'
    assert response.headers["ratelimit"] == f'"{policy}";r=0;t={wait}'
    return wait


async def test_a_route_limit_answers_429_with_retry_after_and_ratelimit_headers(
    app_client: AppClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: N4, W2
    key = await Identity(pgstack_migrated_db).api_keys.create(bob.id, "ci")
    await away_from_boundary(60, margin=10)
    async with app_client() as client:
        first = await client.get("/search", headers=bearer(key.key))
        second = await client.get("/search", headers=bearer(key.key))
        third = await client.get("/search", headers=bearer(key.key))
        assert first.status_code == second.status_code == 200
        assert first.headers["ratelimit-policy"] == '"search";q=2;w=60'
        assert first.headers["ratelimit"].startswith('"search";r=1;t=')
        assert second.headers["ratelimit"].startswith('"search";r=0;t=')
        assert_429(third, "search", 2, 60)
        # The limit is per caller: another key of the same user has its own count.
        other = await Identity(pgstack_migrated_db).api_keys.create(bob.id, "other")
        assert (await client.get("/search", headers=bearer(other.key))).status_code == 200
        # Without credentials the route is a 401, not counted.
        assert (await client.get("/search")).status_code == 401


async def test_a_per_address_limit_needs_no_credentials(app_client: AppClient) -> None:
    # proves: N4, W2
    await away_from_boundary(60, margin=10)
    async with app_client() as client:
        statuses = [(await client.get("/public")).status_code for _ in range(3)]
        assert statuses[:2] == [200, 200]
        assert_429(await client.get("/public"), "pub", 2, 60)


async def test_every_authenticated_route_counts_against_the_keys_tier(
    app_client: AppClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: N4, I5, W2
    identity = Identity(pgstack_migrated_db)
    standard = await identity.api_keys.create(bob.id, "standard")
    gold = await identity.api_keys.create(bob.id, "gold", rate_limit_tier="gold")
    free = await identity.api_keys.create(bob.id, "free", rate_limit_tier="unlimited")
    tiers = {"standard": "3/hour", "gold": "5/hour", "unlimited": "", "session": "2/hour"}
    await away_from_boundary(3600, margin=10)
    async with app_client(rate_limit_tiers=tiers) as client:
        # /auth/me is the identity router's own route: limited like every authenticated one.
        got = [(await client.get("/auth/me", headers=bearer(standard.key))).status_code]
        got += [(await client.get("/auth/me", headers=bearer(standard.key))).status_code]
        got += [(await client.get("/search", headers=bearer(standard.key))).status_code]
        assert got == [200, 200, 200]
        assert_429(
            await client.get("/auth/me", headers=bearer(standard.key)), "tier-standard", 3, 3600
        )
        # Each tier has its own limits; "unlimited" ("" in the table) has none.
        assert [
            (await client.get("/auth/me", headers=bearer(gold.key))).status_code for _ in range(6)
        ] == [200] * 5 + [429]
        assert [
            (await client.get("/auth/me", headers=bearer(free.key))).status_code for _ in range(10)
        ] == [200] * 10
        # A session counts as the tier "session", per user.
        login = await identity.auth.login("bob@example.com", PASSWORD)
        statuses = [
            (await client.get("/auth/me", headers=bearer(login.token))).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]


async def test_a_key_of_an_unknown_tier_gets_the_standard_limits(
    app_client: AppClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: N4, I5
    key = await Identity(pgstack_migrated_db).api_keys.create(
        bob.id, "odd", rate_limit_tier="no-such-tier"
    )
    await away_from_boundary(3600, margin=10)
    async with app_client(rate_limit_tiers={"standard": "2/hour"}) as client:
        statuses = [
            (await client.get("/auth/me", headers=bearer(key.key))).status_code for _ in range(3)
        ]
    assert statuses == [200, 200, 429]


async def test_a_per_tenant_limit_is_shared_by_the_tenants_members_only(
    app_client: AppClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: N4, W2 (a route's limit counted per tenant, not per caller)
    identity, tenancy = Identity(pgstack_migrated_db), Tenancy(pgstack_migrated_db)
    carol = await identity.users.create("carol@example.com", PASSWORD)
    acme = await tenancy.tenants.create("T0ACME", "Acme", owner_id=bob.id)
    globex = await tenancy.tenants.create("T0GLOBEX", "Globex", owner_id=carol.id)
    await tenancy.memberships.add(acme.id, carol.id, "member")
    keys = {
        user.email: (await identity.api_keys.create(user.id, "ci", scopes=["tenant:owner"])).key
        for user in (bob, carol)
    }
    await away_from_boundary(60, margin=10)
    async with app_client() as client:

        async def export(email: str, tenant_id: uuid.UUID) -> httpx.Response:
            return await client.post(
                f"/workspaces/{tenant_id}/exports", headers=bearer(keys[email])
            )

        first = await export("bob@example.com", acme.id)
        assert first.status_code == 200, first.text
        assert first.headers["ratelimit-policy"] == '"export";q=2;w=60'
        assert (await export("carol@example.com", acme.id)).status_code == 200
        # Two members, one count: the tenant's third export is refused, whoever asks.
        assert_429(await export("bob@example.com", acme.id), "export", 2, 60)
        assert_429(await export("carol@example.com", acme.id), "export", 2, 60)
        # Another tenant has its own count, for the same caller.
        assert (await export("carol@example.com", globex.id)).status_code == 200
        # A tenant the caller is not a member of is a 404 and counts nothing.
        assert (await export("bob@example.com", globex.id)).status_code == 404
        assert (await export("carol@example.com", globex.id)).status_code == 200


async def test_enforce_tenant_limit_counts_per_tenant_by_plan(app_client: AppClient) -> None:
    # proves: N4
    plans = {"default": "3/hour", "free": "1/hour", "enterprise": ""}
    one, two = uuid.uuid4(), uuid.uuid4()
    await away_from_boundary(3600, margin=10)
    async with app_client(rate_limit_plans=plans) as client:
        assert (await client.get(f"/tenants/{one}/ping?plan=free")).json() == {"remaining": 0}
        assert_429(await client.get(f"/tenants/{one}/ping?plan=free"), "plan-free", 1, 3600)
        # Another tenant has its own count; an unknown plan gets "default"'s limits.
        remaining = [
            (await client.get(f"/tenants/{two}/ping?plan=mystery")).json()["remaining"]
            for _ in range(3)
        ]
        assert remaining == [2, 1, 0]
        assert (await client.get(f"/tenants/{two}/ping?plan=mystery")).status_code == 429
        # No limit at all for enterprise.
        assert (await client.get(f"/tenants/{one}/ping?plan=enterprise")).json() == {
            "remaining": -1
        }


async def test_the_openapi_document_lists_the_429_and_its_headers(app_client: AppClient) -> None:
    # proves: W2, W3
    async with app_client() as client:
        document = (await client.get("/openapi.json")).json()
    for path in ("/search", "/public", "/auth/me", "/tenants/{tenant_id}/ping"):
        answer = document["paths"][path]["get"]["responses"]["429"]
        assert PROBLEM in answer["content"]
        assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= set(answer["headers"])
    problem = document["components"]["schemas"]["Problem"]
    assert "violated-policies" in problem["properties"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("rate_limit_tiers", {"standard": "lots/minute"}),
        ("rate_limit_tiers", {"standard": "0/minute"}),
        ("rate_limit_plans", {"free": "100/fortnight"}),
    ],
)
def test_a_malformed_tier_limit_fails_at_start_naming_its_variable(
    pgstack_migrated_settings: Settings, variable: str, value: dict[str, str]
) -> None:
    # proves: N4, C1
    settings = pgstack_migrated_settings.model_copy(update={variable: value})
    with pytest.raises(ConfigurationError, match=f"PGSTACK_{variable.upper()}"):
        build_app(settings)


def test_settings_read_tiers_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # proves: N4, C1
    monkeypatch.setenv("PGSTACK_RATE_LIMIT_TIERS", '{"standard": "10/second; 500/hour"}')
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@localhost/db")
    assert Settings().rate_limit_tiers == {"standard": "10/second; 500/hour"}
    monkeypatch.setenv("PGSTACK_RATE_LIMIT_TIERS", "not json")
    with pytest.raises(ConfigurationError, match="RATE_LIMIT_TIERS"):
        Settings()


def test_the_default_tiers_leave_room_for_a_normal_client() -> None:
    # proves: N4
    settings = Settings(database_url="postgresql://u@localhost/db")
    policies = RateLimitPolicies.from_settings(settings)
    assert all(limit.quota / limit.seconds >= 50 for limit in policies.tier("standard"))
    assert all(limit.quota / limit.seconds >= 50 for limit in policies.tier("session"))


def test_an_unknown_per_is_refused_when_the_route_is_declared() -> None:
    # proves: N4 (a typo never silently falls back to per-caller counting)
    with pytest.raises(ValueError, match="'caller', 'ip' or 'tenant'"):
        rate_limit("2/minute", resource="export", per="workspace")  # type: ignore[arg-type]
