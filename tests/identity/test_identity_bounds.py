"""Values too long or out of range are refused before they reach a column (no DBAPIError)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import InvalidInputError
from pgstack.identity import Identity, User

from .conftest import STRONG as PASSWORD


async def test_an_address_longer_than_an_address_can_be_is_refused(identity: Identity) -> None:
    # proves: I1, I8
    with pytest.raises(InvalidInputError, match="at most 254"):
        await identity.users.create("a" * 10_000 + "@example.com", PASSWORD)
    assert await identity.users.get_by_email("a" * 10_000 + "@example.com") is None


@pytest.mark.parametrize("roles", [[""], ["  "], ["x" * 65], ["ok", "bad\x07bell"]])
async def test_roles_and_groups_of_a_new_user_are_checked(
    identity: Identity, roles: list[str]
) -> None:
    # proves: I1 (the same rule as set_roles and update)
    with pytest.raises(InvalidInputError, match="at most 64 characters"):
        await identity.users.create("roles@example.com", PASSWORD, roles=roles)
    with pytest.raises(InvalidInputError, match="at most 64 characters"):
        await identity.users.create("groups@example.com", PASSWORD, groups=roles)
    assert await identity.users.get_by_email("roles@example.com") is None
    made = await identity.users.create("roles@example.com", PASSWORD, roles=["admin", "x" * 64])
    assert made.roles == ["admin", "x" * 64]


async def test_a_key_name_and_lifetime_are_bounded(identity: Identity, alice: User) -> None:
    # proves: I5
    with pytest.raises(InvalidInputError, match="at most 200"):
        await identity.api_keys.create(alice.id, "k" * 201)
    for lifetime in (timedelta(days=3_000_000), timedelta(0), timedelta(days=-1)):
        with pytest.raises(InvalidInputError, match="3,650 days"):
            await identity.api_keys.create(alice.id, "k", expires_in=lifetime)
    assert await identity.api_keys.list_for(alice.id) == []
    issued = await identity.api_keys.create(alice.id, "k" * 200, expires_in=timedelta(days=3650))
    assert issued.api_key.expires_at is not None


async def test_revoking_a_revoked_key_again_changes_and_records_nothing(
    identity: Identity, alice: User, pgstack_migrated_db: Database
) -> None:
    # proves: I5, A4 (one security entry per revocation, not per call)
    issued = await identity.api_keys.create(alice.id, "k")
    first = await identity.api_keys.revoke(issued.api_key.id)
    again = await identity.api_keys.revoke(issued.api_key.id)
    assert again.revoked_at == first.revoked_at
    rows = await pgstack_migrated_db.run(
        text(
            "SELECT count(*) FROM audit_log WHERE action = 'api_key.revoked' AND resource_id = :id"
        ),
        {"id": str(issued.api_key.id)},
    )
    assert rows[0][0] == 1
