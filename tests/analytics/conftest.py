"""Fixtures for analytics tests: a migrated database, two tenants and their users."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pgstack.analytics import QueryAnalytics
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy, Tenant

from ..conversations.conftest import client  # noqa: F401 - the app's client, a fixture

STRONG = "violet Harbour 42 lanterns drift"


@dataclass
class Org:
    """Tenant A with five users, tenant B with one."""

    a: Tenant
    b: Tenant
    users: list[User]
    outsider: User


@pytest.fixture
async def org(pgstack_migrated_db: Database) -> Org:
    identity = Identity(pgstack_migrated_db)
    tenancy = Tenancy(pgstack_migrated_db)
    users = [
        await identity.users.create(f"u{i}@a.example", STRONG, verified=True) for i in range(5)
    ]
    outsider = await identity.users.create("z@b.example", STRONG, verified=True)
    a = await tenancy.tenants.create("TA", "Tenant A", owner_id=users[0].id)
    b = await tenancy.tenants.create("TB", "Tenant B", owner_id=outsider.id)
    for user in users[1:]:
        await tenancy.memberships.add(a.id, user.id, "member")
    return Org(a, b, users, outsider)


@pytest.fixture
def analytics(pgstack_migrated_db: Database) -> QueryAnalytics:
    return QueryAnalytics(pgstack_migrated_db)
