"""Group guards over HTTP: `require_groups` admits members of a group, and keys only with it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends

from pgstack.config import Settings
from pgstack.identity import Identity
from pgstack.web import create_app
from pgstack.web.identity import identity_router, require_groups

from .conftest import STRONG, bearer, login, problem


@pytest.fixture
async def groups_client(pgstack_migrated_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(pgstack_migrated_settings, monitor_interval=None, routers=[identity_router()])

    @app.get("/builders", dependencies=[Depends(require_groups("builders"))])
    async def builders() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/either", dependencies=[Depends(require_groups("builders", "ops", any_of=True))])
    async def either() -> dict[str, bool]:
        return {"ok": True}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_group_guards_refuse_outsiders_with_403(
    groups_client: httpx.AsyncClient, identity: Identity
) -> None:
    # proves: I1 (groups: has/any), W2 (403 problem details), I9 (a key's scopes bound it)
    builder = await identity.users.create("b@example.com", STRONG, groups=["builders"])
    await identity.users.create("o@example.com", STRONG, groups=["ops"])
    await identity.users.create("n@example.com", STRONG)
    as_builder = bearer(await login(groups_client, "b@example.com", STRONG))
    as_ops = bearer(await login(groups_client, "o@example.com", STRONG))
    as_nobody = bearer(await login(groups_client, "n@example.com", STRONG))

    assert (await groups_client.get("/builders", headers=as_builder)).status_code == 200
    assert (await groups_client.get("/either", headers=as_ops)).status_code == 200
    refused = problem(await groups_client.get("/builders", headers=as_ops), 403)
    assert "builders" in str(refused["detail"])
    problem(await groups_client.get("/either", headers=as_nobody), 403)
    problem(await groups_client.get("/builders"), 401)

    # A key acts for its user's groups only when it carries the group as a scope.
    plain = await identity.api_keys.create(builder.id, "plain", scopes=["*"])
    scoped = await identity.api_keys.create(builder.id, "scoped", scopes=["builders"])
    refused = problem(await groups_client.get("/builders", headers=bearer(plain.key)), 403)
    assert "scope" in str(refused["detail"])
    assert (await groups_client.get("/builders", headers=bearer(scoped.key))).status_code == 200

    await identity.users.update(builder.id, groups=[])
    problem(await groups_client.get("/builders", headers=bearer(scoped.key)), 403)
