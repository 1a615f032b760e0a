"""The app of `pgstack serve`: every module under `/v1`, request ids, rate limits, CORS.

In-process through httpx (`service_app`, the app `pgstack serve` runs); the CLI's own
`--router` option runs as a real `pgstack serve` with the campaigns example's router.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy
from pgstack.web.modules import API_PREFIX, builtin_routers, import_routers, service_app

from ..tenancy.test_ratelimit import away_from_boundary
from .conftest import free_port, pgstack_serve, served

PASSWORD = "violet Harbour 42 lanterns drift"
PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "examples" / "campaigns"
PGSTACK = str(Path(sys.executable).with_name("pgstack"))
ServiceClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def service(pgstack_migrated_settings: Settings) -> ServiceClient:
    """A client of `pgstack serve`'s app on this test's database, settings overridden."""

    @asynccontextmanager
    async def client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = pgstack_migrated_settings.model_copy(update=overrides)
        async with served(service_app(settings, monitor_interval=None)) as c:
            yield c

    return client


@pytest.fixture
async def bob(pgstack_migrated_db: Database) -> User:
    return await Identity(pgstack_migrated_db).users.create(
        "bob@example.com", PASSWORD, verified=True
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def in_own_tenant(db: Database, user: User, name: str) -> dict[str, str]:
    """Headers of a new key of `user` (scope tenant:member) in a new tenant `user` owns."""
    tenant = await Tenancy(db).tenants.create(name, name.upper(), owner_id=user.id)
    key = await Identity(db).api_keys.create(user.id, name, scopes=["tenant:member"])
    return {**bearer(key.key), "X-Tenant-ID": str(tenant.id)}


# -- the document ---------------------------------------------------------------------------


async def test_the_served_document_lists_every_module_route_under_v1(
    service: ServiceClient,
) -> None:
    # proves: W2, W1
    async with service() as client:
        document = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
        dashboard = await client.get("/v1/admin/db")  # HTML, outside the document
    paths = document["paths"]
    expected = {
        (f"{API_PREFIX}{route.path_format}", method.lower())
        for router in builtin_routers()
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    }
    listed = {(path, method) for path, item in paths.items() for method in item}
    assert expected <= listed, sorted(expected - listed)
    # Each module is there, the audit log's admin routes too.
    for prefix in (
        "/v1/auth/",
        "/v1/admin/users",
        "/v1/tenants",
        "/v1/admin/tenants",
        "/v1/conversations",
        "/v1/analytics",
        "/v1/admin/tokens",
        "/v1/admin/audit/",
    ):
        assert any(path.startswith(prefix) for path in paths), prefix
    # Only the probes stay at the root (the docs are not in the document).
    assert {p for p in paths if not p.startswith("/v1/")} == {
        "/health",
        "/ready",
        "/startup",
        "/metrics",
    }
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert dashboard.status_code == 401


async def test_an_unversioned_path_answers_404_naming_the_v1_path(service: ServiceClient) -> None:
    # proves: W2
    async with service() as client:
        old = await client.post("/auth/login", json={"email": "a@example.com", "password": "x"})
        unknown = await client.get("/no/such/route")
        probe = await client.get("/health")
        versioned_probe = await client.get("/v1/health")
    assert old.status_code == 404
    assert old.headers["content-type"].startswith(PROBLEM)
    assert "/v1/auth/login" in old.json()["detail"]
    # A path that exists nowhere gets the plain 404, without a pointer.
    assert unknown.status_code == 404 and "/v1" not in unknown.json().get("detail", "")
    assert probe.status_code == 200
    assert versioned_probe.status_code == 404  # the probes live at the root only


async def test_a_malformed_id_under_v1_is_a_422_naming_the_parameter(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W2, I8
    headers = await in_own_tenant(pgstack_migrated_db, bob, "acme")
    async with service() as client:
        tenant = await client.get("/v1/tenants/not-a-uuid", headers=headers)
        user = await client.get("/v1/admin/users/not-a-uuid", headers=headers)
        moved = await client.get("/tenants/not-a-uuid", headers=headers)
    for answer, name in ((tenant, "tenant_id"), (user, "user_id")):
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith(PROBLEM)
        body = answer.json()
        assert body["errors"] == [
            {"loc": ["path", name], "msg": body["errors"][0]["msg"], "type": "uuid_parsing"}
        ]
        assert name in body["detail"] and "UUID" in body["detail"]
    # Without /v1 it is still the path that is wrong: a 404 that names the path under /v1.
    assert moved.status_code == 404, moved.text
    assert "/v1/tenants/not-a-uuid" in moved.json()["detail"]


async def test_a_hint_in_an_answer_names_the_path_under_v1(
    service: ServiceClient, pgstack_migrated_db: Database
) -> None:
    # proves: W2, D2 (a hint that names a route names it where the service serves it)
    await Identity(pgstack_migrated_db).users.create("unverified@example.com", PASSWORD)
    async with service() as client:
        login = await client.post(
            "/v1/auth/login", json={"email": "unverified@example.com", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        refused = await client.post(
            "/v1/auth/api-keys", json={"name": "ci", "password": PASSWORD}, headers=bearer(token)
        )
        asked = await client.post("/v1/auth/verify/request", headers=bearer(token))
    assert refused.status_code == 403, refused.text
    assert "(POST /v1/auth/verify/request)" in refused.json()["detail"]
    assert asked.status_code == 202  # the path the hint names is served


# -- request ids ----------------------------------------------------------------------------


async def test_a_request_id_sent_comes_back_and_a_hostile_one_is_replaced(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W2, A1
    key = await Identity(pgstack_migrated_db).api_keys.create(bob.id, "ids")
    async with service() as client:
        ok = await client.get(
            "/v1/auth/me", headers={**bearer(key.key), "X-Request-ID": "req-42.a:b"}
        )
        refused = await client.get("/v1/auth/me", headers={"X-Request-ID": "req-43"})
        hostile = await client.get(
            "/v1/auth/me", headers={**bearer(key.key), "X-Request-ID": "a b\x7f<script>"}
        )
        none = await client.get("/v1/auth/me", headers=bearer(key.key))
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-42.a:b"
    # An error answer carries it too.
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "req-43"
    # A value that is not a plain token is not echoed: the service makes its own.
    assert hostile.headers["x-request-id"] != "a b\x7f<script>"
    assert len(hostile.headers["x-request-id"]) == 32
    assert len(none.headers["x-request-id"]) == 32


# -- rate limits ----------------------------------------------------------------------------


async def test_a_v1_route_over_the_keys_tier_answers_429_problem_with_retry_after(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W2, N4
    key = await Identity(pgstack_migrated_db).api_keys.create(bob.id, "limited")
    await away_from_boundary(3600, margin=10)
    async with service(rate_limit_tiers={"standard": "2/hour"}) as client:
        statuses = [
            (await client.get("/v1/auth/me", headers=bearer(key.key))).status_code for _ in range(2)
        ]
        refused = await client.get("/v1/auth/me", headers=bearer(key.key))
    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith(PROBLEM)
    body = refused.json()
    assert body["status"] == 429 and body["violated-policies"] == ["tier-standard"]
    assert 0 < int(refused.headers["retry-after"]) <= 3600


async def test_a_v1_tenant_route_over_the_tenants_plan_answers_429(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W2, N4
    tenant = await Tenancy(pgstack_migrated_db).tenants.create(
        "acme", "Acme", plan="free", owner_id=bob.id
    )
    key = await Identity(pgstack_migrated_db).api_keys.create(
        bob.id, "tenant", scopes=["tenant:owner"]
    )
    await away_from_boundary(3600, margin=10)
    async with service(rate_limit_plans={"free": "1/hour"}) as client:
        first = await client.get(f"/v1/tenants/{tenant.id}", headers=bearer(key.key))
        second = await client.get(
            "/v1/tenants/current", headers={**bearer(key.key), "X-Tenant-ID": str(tenant.id)}
        )
    assert first.status_code == 200, first.text
    assert first.json()["role"] == "owner"
    assert second.status_code == 429
    assert second.json()["violated-policies"] == ["plan-free"]
    assert int(second.headers["retry-after"]) > 0


# -- CORS -----------------------------------------------------------------------------------

APP_ORIGIN = "https://app.example.com"


def preflight(origin: str, method: str = "GET") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, x-tenant-id",
    }


async def test_cors_preflight_admits_only_the_configured_origins(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W2
    key = await Identity(pgstack_migrated_db).api_keys.create(bob.id, "cors")
    async with service(cors_origins=[APP_ORIGIN, "http://localhost:3000"]) as client:
        allowed = await client.options("/v1/auth/me", headers=preflight(APP_ORIGIN))
        other = await client.options("/v1/auth/me", headers=preflight("https://evil.example"))
        actual = await client.get("/v1/auth/me", headers={**bearer(key.key), "Origin": APP_ORIGIN})
        foreign = await client.get(
            "/v1/auth/me", headers={**bearer(key.key), "Origin": "https://evil.example"}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "GET" in allowed.headers["access-control-allow-methods"]
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "x-tenant-id" in allowed_headers
    assert allowed.headers["access-control-max-age"] == "600"
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = actual.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed
    # The browser of another origin gets the answer without the header, so it hides it.
    assert "access-control-allow-origin" not in foreign.headers


async def test_without_cors_origins_no_cors_header_is_sent(service: ServiceClient) -> None:
    # proves: W2
    async with service() as client:
        answer = await client.options("/v1/auth/me", headers=preflight(APP_ORIGIN))
        plain = await client.get("/health", headers={"Origin": APP_ORIGIN})
    assert "access-control-allow-origin" not in answer.headers
    assert answer.status_code == 405  # no preflight handling: the route has no OPTIONS
    assert "access-control-allow-origin" not in plain.headers


def test_cors_origins_are_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # proves: W2
    monkeypatch.setenv("PGSTACK_CORS_ORIGINS", " https://app.example.com, http://localhost:3000 ,")
    assert Settings().cors_origins == ["https://app.example.com", "http://localhost:3000"]
    monkeypatch.setenv("PGSTACK_CORS_ORIGINS", "*")
    assert Settings().cors_origins == ["*"]
    for bad in ("https://app.example.com/", "app.example.com", "https://a.example.com/path"):
        monkeypatch.setenv("PGSTACK_CORS_ORIGINS", bad)
        with pytest.raises(ConfigurationError) as caught:
            Settings()
        assert "PGSTACK_CORS_ORIGINS" in caught.value.message
        assert "scheme://host[:port]" in caught.value.message


# -- the application's own routers ----------------------------------------------------------


def test_import_routers_takes_a_router_a_list_or_a_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: W1
    (tmp_path / "svc_routes_x1.py").write_text(
        "from fastapi import APIRouter\n"
        "one = APIRouter(prefix='/one')\n"
        "two = [APIRouter(prefix='/a'), APIRouter(prefix='/b')]\n"
        "def make():\n    return APIRouter(prefix='/made')\n"
        "not_a_router = 42\n"
        "from fastapi import FastAPI\n"
        "app = FastAPI()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [r.prefix for r in import_routers("svc_routes_x1:one", root=tmp_path)] == ["/one"]
    assert [r.prefix for r in import_routers("svc_routes_x1:two")] == ["/a", "/b"]
    assert [r.prefix for r in import_routers("svc_routes_x1:make")] == ["/made"]
    for spec, words in (
        ("svc_routes_x1:not_a_router", "is int, not a fastapi.APIRouter"),
        ("svc_routes_x1:app", "is FastAPI, not a fastapi.APIRouter"),
        ("svc_routes_x1:missing", "missing"),
        ("no_such_module_x1:router", "no_such_module_x1"),
        ("svc_routes_x1", "module:attribute"),
    ):
        with pytest.raises(ConfigurationError) as caught:
            import_routers(spec)
        assert words in caught.value.message, caught.value.message


def test_service_app_mounts_the_application_s_routers_under_v1(
    pgstack_settings: Settings,
) -> None:
    # proves: W1, W2
    own = APIRouter(prefix="/things")

    @own.get("")
    async def things() -> list[str]:
        return []

    paths = service_app(pgstack_settings, routers=[own], monitor_interval=None).openapi()["paths"]
    assert "/v1/things" in paths and "/v1/auth/login" in paths and "/things" not in paths


def test_serve_mounts_an_application_router_given_with_router(
    pgstack_migrated_settings: Settings, tmp_path: Path
) -> None:
    # proves: W1, W2
    log = tmp_path / "serve.log"
    # In the example's folder: its pyproject names its migrations, which serve applies.
    with pgstack_serve(
        pgstack_migrated_settings,
        ["--router", "campaigns.api:router"],
        log=log,
        cwd=CAMPAIGNS,
        env={"DATABASE_POOL_SIZE": "3"},
    ) as base:
        key = _api_key(pgstack_migrated_settings)
        paths = httpx.get(f"{base}/openapi.json").json()["paths"]
        created = httpx.post(f"{base}/v1/campaigns", json={"name": "Spring"}, headers=bearer(key))
        listed = httpx.get(f"{base}/v1/campaigns", headers=bearer(key))
        anonymous = httpx.get(f"{base}/v1/campaigns")
    assert "/v1/campaigns" in paths and "/v1/auth/login" in paths, sorted(paths)
    assert created.status_code == 201, created.text
    assert [c["name"] for c in listed.json()["items"]] == ["Spring"]
    assert anonymous.status_code == 401
    assert "API at http://127.0.0.1" in log.read_text()


def _api_key(settings: Settings) -> str:
    import asyncio

    async def make() -> str:
        async with Database(settings) as db:
            identity = Identity(db)
            user = await identity.users.create("carol@example.com", PASSWORD, verified=True)
            return (await identity.api_keys.create(user.id, "serve")).key

    return asyncio.run(make())


def test_serve_refuses_a_router_it_cannot_import_in_one_line(tmp_path: Path) -> None:
    # proves: W1
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run(
        [PGSTACK, "serve", "--port", str(free_port()), "--router", "no_such_app_x1:router"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "no_such_app_x1" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


# -- findings of the fuzz run, each fixed ---------------------------------------------------


async def test_time_filters_take_only_rfc3339_date_times_not_numbers(
    service: ServiceClient, pgstack_migrated_db: Database
) -> None:
    # proves: W3
    # pydantic reads a number as seconds since 1970: the document says date-time, so a
    # number is a 422 (found by the fuzz run: `until=0.5` was a 200).
    identity = Identity(pgstack_migrated_db)
    admin = await identity.users.create("root@example.com", PASSWORD, roles=["admin"])
    key = await identity.api_keys.create(admin.id, "admin", scopes=["admin", "tenant:owner"])
    tenant = await Tenancy(pgstack_migrated_db).tenants.create("t1", "T1", owner_id=admin.id)
    headers = {**bearer(key.key), "X-Tenant-ID": str(tenant.id)}
    async with service() as client:
        for path in ("/v1/admin/audit/entries", "/v1/analytics/popular"):
            for name in ("since", "until"):
                for value in ("0.5", "1767225600", "2026-01-01", "2026-01-01T00:00"):
                    refused = await client.get(path, params={name: value}, headers=headers)
                    assert refused.status_code == 422, (path, name, value, refused.text)
                    assert "RFC 3339" in refused.text
            good = await client.get(
                path,
                params={"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00.5+01:00"},
                headers=headers,
            )
            assert good.status_code == 200, (path, good.text)


async def test_a_logged_query_s_time_is_a_json_number_not_a_boolean_or_text(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W3
    # Found by the fuzz run: `"response_time_ms": false` was stored as 0 (a 201).
    headers = await in_own_tenant(pgstack_migrated_db, bob, "t2")
    body = {"query_text": "q", "query_type": "search", "status": "success"}
    async with service() as client:
        for bad in (False, True, "12", None):
            refused = await client.post(
                "/v1/analytics/queries", json={**body, "response_time_ms": bad}, headers=headers
            )
            assert refused.status_code == 422, (bad, refused.text)
        for good in (0, 12, 12.5):
            taken = await client.post(
                "/v1/analytics/queries", json={**body, "response_time_ms": good}, headers=headers
            )
            assert taken.status_code == 201, (good, taken.text)
            assert taken.json()["response_time_ms"] == good


async def test_a_message_s_token_count_is_a_json_integer_not_text_or_a_boolean(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W3
    # Found by the fuzz run: `"tokens": "12"` (and `true`) were stored as numbers (a 201).
    headers = await in_own_tenant(pgstack_migrated_db, bob, "t3")
    async with service() as client:
        started = await client.post("/v1/conversations", json={"agent_id": "a"}, headers=headers)
        assert started.status_code == 201, started.text
        messages = f"/v1/conversations/{started.json()['id']}/messages"
        for bad in ("12", True, 1.5):
            refused = await client.post(
                messages, json={"role": "user", "content": "hi", "tokens": bad}, headers=headers
            )
            assert refused.status_code == 422, (bad, refused.text)
        taken = await client.post(
            messages, json={"role": "user", "content": "hi", "tokens": 12}, headers=headers
        )
    assert taken.status_code == 201, taken.text
    assert taken.json()["tokens"] == 12


async def test_patching_a_tenant_s_required_field_to_null_is_a_422_not_a_500(
    service: ServiceClient, pgstack_migrated_db: Database, bob: User
) -> None:
    # proves: W3
    # Found by the fuzz run: `"timezone": null` reached the NOT NULL column (a 500).
    tenant = await Tenancy(pgstack_migrated_db).tenants.create("t4", "T4", owner_id=bob.id)
    key = await Identity(pgstack_migrated_db).api_keys.create(bob.id, "t", scopes=["tenant:owner"])
    path = f"/v1/tenants/{tenant.id}"
    async with service() as client:
        for field in ("name", "locale", "timezone", "settings"):
            refused = await client.patch(path, json={field: None}, headers=bearer(key.key))
            assert refused.status_code == 422, (field, refused.text)
            assert refused.headers["content-type"].startswith(PROBLEM)
        # The nullable ones clear with null.
        cleared = await client.patch(
            path,
            json={"domain": None, "trial_ends_at": None, "timezone": "Europe/Paris"},
            headers=bearer(key.key),
        )
        document = (await client.get("/openapi.json")).json()
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["domain"] is None and cleared.json()["timezone"] == "Europe/Paris"
    # The document says the same: null is not offered where it is refused.
    patch = document["components"]["schemas"]["TenantPatchIn"]["properties"]
    assert "null" not in json.dumps(patch["timezone"])
    assert "null" in json.dumps(patch["domain"])
