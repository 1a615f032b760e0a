"""Row-level security's refusals as the service meets them: the production roles, over HTTP.

A write the policy refuses (a row of another tenant, or a transaction that began before the
tenant was set) is SQLSTATE 42501, "new row violates row-level security policy". pgstack let
it out untranslated, so a route answered 500 with a generic detail. It is a TenantScopeError
(403) that says what to do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import TenantScopeError
from pgstack.orm import tenant_context
from pgstack.web import create_app
from pgstack.web.deps import TransactionDep
from tests.tenancy.tenancy_rls_setup import ACME, GLOBEX, RlsApp

PLANT = text("INSERT INTO meetings (id, tenant_id, title) VALUES (:id, :t, 'planted')")


@pytest.fixture
async def served(rls_app: RlsApp) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(rls_app.settings(), monitor_interval=None, routers=[])

    @app.post("/plant/{tenant_id}")
    async def plant(tenant_id: uuid.UUID, session: TransactionDep) -> dict[str, bool]:
        # A careless route: acts for ACME but writes the tenant id the caller sent.
        with tenant_context(ACME):
            await session.execute(PLANT, {"id": uuid.uuid4(), "t": tenant_id})
        return {"ok": True}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_a_write_into_another_tenant_is_a_403_not_a_500(served: httpx.AsyncClient) -> None:
    # proves: N3, I8
    refused = await served.post(f"/plant/{GLOBEX}")
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "row-level security" in refused.json()["detail"]
    assert (await served.post(f"/plant/{ACME}")).status_code == 200


async def test_a_transaction_begun_before_the_tenant_is_refused_clearly(rls_app: RlsApp) -> None:
    # proves: N3, N2
    async with Database(rls_app.settings()) as db:
        with pytest.raises(TenantScopeError, match="tenant_context"):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))  # the transaction begins: no tenant
                with tenant_context(ACME):
                    await session.execute(PLANT, {"id": uuid.uuid4(), "t": ACME})
        with tenant_context(ACME), pytest.raises(TenantScopeError):
            await db.run(PLANT, {"id": uuid.uuid4(), "t": GLOBEX})
        with tenant_context(ACME):
            assert await db.run(text("SELECT count(*) FROM meetings")) == [(0,)]
