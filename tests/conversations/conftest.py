"""Fixtures for conversation tests: a migrated database, two tenants, their users."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pgstack.conversations import Conversations
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy, Tenant

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
