"""Fixtures for conversation tests: a migrated database, two tenants, their users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from pgstack.config import Settings
from pgstack.conversations import Conversations
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy, Tenant
from pgstack.web import create_app
from pgstack.web.modules import builtin_routers

STRONG = "violet Harbour 42 lanterns drift"


@dataclass
class People:
    """Tenant A with ada (owner) and bob (member); tenant B with cy (owner)."""

    a: Tenant
    b: Tenant
    ada: User
    bob: User
    cy: User


@pytest.fixture
async def people(pgstack_migrated_db: Database) -> People:
    identity = Identity(pgstack_migrated_db)
    tenancy = Tenancy(pgstack_migrated_db)
    ada = await identity.users.create("ada@a.example", STRONG, verified=True)
    bob = await identity.users.create("bob@a.example", STRONG, verified=True)
    cy = await identity.users.create("cy@b.example", STRONG, verified=True)
    a = await tenancy.tenants.create("TA", "Tenant A", owner_id=ada.id)
    b = await tenancy.tenants.create("TB", "Tenant B", owner_id=cy.id)
    await tenancy.memberships.add(a.id, bob.id, "member")
    return People(a, b, ada, bob, cy)


@pytest.fixture
def conversations(pgstack_migrated_db: Database) -> Conversations:
    return Conversations(pgstack_migrated_db)


PROBLEM = "application/problem+json"


@pytest.fixture
async def client(
    pgstack_migrated_settings: Settings, pgstack_migrated_db: Database
) -> AsyncIterator[httpx.AsyncClient]:
    """The app as `pgstack serve` mounts the built-in routers."""
    app = create_app(pgstack_migrated_settings, monitor_interval=None, routers=builtin_routers())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def login(client: httpx.AsyncClient, email: str, tenant: object) -> dict[str, str]:
    """Bearer headers of the user, acting in `tenant`."""
    response = await client.post("/auth/login", json={"email": email, "password": STRONG})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    return {"Authorization": f"Bearer {token}", "X-Tenant-ID": str(tenant)}


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return dict(response.json())
