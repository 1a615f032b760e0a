"""Users: the table's rules, the model helpers, admin changes, search and statistics."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import ConflictError, InvalidInputError, InvalidQueryError, NotFoundError
from pgstack.identity import Identity, Provider, User

from .conftest import STRONG


async def test_email_is_unique_in_any_letter_case(identity: Identity, alice: User) -> None:
    # proves: I1
    assert alice.email == "alice@example.com"
    assert alice.provider == "local" and not alice.is_external
    assert alice.password_hash is not None and alice.password_hash.startswith("$argon2id$")
    with pytest.raises(ConflictError, match="already exists"):
        await identity.users.create("ALICE@example.COM", STRONG)
    found = await identity.users.get_by_email(" alice@EXAMPLE.com ")
    assert found is not None and found.id == alice.id
    assert alice.id.version == 7


async def test_the_database_refuses_a_second_live_address_and_an_unknown_provider(
    pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I1
    async with pgstack_migrated_db.engine.connect() as conn:
        with pytest.raises(Exception, match="uq_users_email"):
            await conn.execute(
                text("INSERT INTO users (id, email, version) VALUES (:id, 'alice@example.com', 1)"),
                {"id": uuid.uuid4()},
            )
        await conn.rollback()
        with pytest.raises(Exception, match="ck_users_provider"):
            await conn.execute(
                text(
                    "INSERT INTO users (id, email, provider, version) "
                    # Applications register provider names; the database checks their shape.
                    "VALUES (:id, 'x@example.com', 'My Space', 1)"
                ),
                {"id": uuid.uuid4()},
            )


async def test_external_users_have_no_password_and_a_provider_id(identity: Identity) -> None:
    # proves: I1
    bob = await identity.users.create(
        "bob@example.com", provider="azure_ad", provider_user_id="aad-123", verified=True
    )
    assert bob.is_external and bob.password_hash is None and bob.is_verified
    with pytest.raises(InvalidInputError, match="do not give them a password"):
        await identity.users.create("c@example.com", STRONG, provider="google")
    with pytest.raises(InvalidInputError, match="provider's user id"):
        await identity.users.create("c@example.com", provider="github")
    with pytest.raises(InvalidInputError, match="Unknown provider"):
        await identity.users.create("c@example.com", provider="myspace", provider_user_id="1")
    with pytest.raises(ConflictError):
        await identity.users.create(
            "other@example.com", provider="azure_ad", provider_user_id="aad-123"
        )


async def test_role_and_group_helpers_are_saved(identity: Identity, alice: User) -> None:
    # proves: I1
    user = await identity.users.set_roles(alice.id, add=["admin", "editor", "admin"])
    assert user.roles == ["admin", "editor"]
    assert user.has_role("admin") and not user.has_role("owner")
    assert user.has_any_role("owner", "editor") and not user.has_any_role("owner")
    assert user.has_all_roles("admin", "editor") and not user.has_all_roles("admin", "owner")
    user = await identity.users.set_roles(alice.id, remove=["admin"])
    assert (await identity.users.get(alice.id)).roles == ["editor"]
    user = await identity.users.update(alice.id, groups=["sales", "emea"], name="Alice L.")
    stored = await identity.users.get(alice.id)
    assert stored.groups == ["sales", "emea"] and stored.name == "Alice L."
    assert stored.is_in_group("sales") and stored.is_in_any_group("apac", "emea")
    stored.add_group("apac")
    stored.remove_group("sales")
    assert stored.groups == ["emea", "apac"]
    with pytest.raises(InvalidInputError, match="Cannot change password_hash"):
        await identity.users.update(alice.id, password_hash="x")


async def test_deactivate_soft_delete_restore_and_reuse_of_the_address(
    identity: Identity, alice: User
) -> None:
    # proves: I1
    user = await identity.users.set_active(alice.id, False)
    assert not user.is_active
    user.activate()
    assert user.is_active
    await identity.users.set_active(alice.id, True)
    await identity.users.delete(alice.id)
    with pytest.raises(NotFoundError):
        await identity.users.get(alice.id)
    assert (await identity.users.get(alice.id, include_deleted=True)).is_deleted
    again = await identity.users.create("alice@example.com", STRONG)
    assert again.id != alice.id
    await identity.users.hard_delete(again.id)
    restored = await identity.users.restore(alice.id)
    assert not restored.is_deleted


async def _people(identity: Identity, db: Database) -> dict[str, User]:
    users = {
        "ann": await identity.users.create(
            "ann@acme.io", STRONG, name="Ann Admin", roles=["admin"], verified=True
        ),
        "ben": await identity.users.create(
            "ben@acme.io", STRONG, name="Ben Builder", roles=["editor"]
        ),
        "cy": await identity.users.create(
            "cy@other.org", provider="google", provider_user_id="g-1", name="Cy", verified=True
        ),
        "dee": await identity.users.create(
            "dee_x@acme.io", STRONG, name="Dee", roles=["admin", "editor"], verified=True
        ),
    }
    await identity.users.set_active(users["ben"].id, False)
    await identity.users.delete(users["cy"].id)
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE users SET last_login_at = now() - interval '2 days', "
                "locked_until = now() + interval '5 minutes', "
                "created_at = now() - interval '3 days' WHERE email = 'dee_x@acme.io'"
            )
        )
    return users


async def test_search_by_email_name_role_status_and_provider(
    identity: Identity, pgstack_migrated_db: Database
) -> None:
    # proves: I6
    await _people(identity, pgstack_migrated_db)

    async def emails(**criteria: object) -> list[str]:
        page = await identity.users.search(sort="email", **criteria)  # type: ignore[arg-type]
        assert page.total == len(page.items)
        return [u.email for u in page.items]

    assert await emails(email="ACME") == ["ann@acme.io", "ben@acme.io", "dee_x@acme.io"]
    assert await emails(email="_") == ["dee_x@acme.io"], "_ is matched literally"
    assert await emails(name="builder") == ["ben@acme.io"]
    assert await emails(role="admin") == ["ann@acme.io", "dee_x@acme.io"]
    assert await emails(role="admin", status="locked") == ["dee_x@acme.io"]
    assert await emails(status="inactive") == ["ben@acme.io"]
    assert await emails(status="unverified") == ["ben@acme.io"]
    assert await emails(status="deleted") == ["cy@other.org"]
    assert await emails(provider="google") == []
    assert await emails(provider="local", status="active") == ["ann@acme.io", "dee_x@acme.io"]
    page = await identity.users.search(limit=2, sort="email")
    assert page.total == 3 and [u.email for u in page.items] == ["ann@acme.io", "ben@acme.io"]
    with pytest.raises(InvalidInputError, match="Unknown status"):
        await identity.users.search(status="asleep")
    with pytest.raises(InvalidQueryError):
        await identity.users.search(sort="password_hash")


async def test_statistics_by_provider_status_day_and_activity(
    identity: Identity, pgstack_migrated_db: Database
) -> None:
    # proves: I6
    await _people(identity, pgstack_migrated_db)
    stats = await identity.users.statistics(days=30)
    assert stats.total == 3
    assert stats.by_provider["local"] == 3 and stats.by_provider[Provider.GOOGLE] == 0
    assert stats.by_status == {
        "active": 2,
        "inactive": 1,
        "locked": 1,
        "unverified": 1,
        "deleted": 1,
    }
    today = datetime.now(UTC).date()
    assert stats.signups_per_day == {today - timedelta(days=3): 1, today: 2}
    assert stats.active_last_days == 1
    assert (await identity.users.statistics(days=1)).active_last_days == 0


async def test_lookalike_addresses_meet_one_account_or_are_refused(
    identity: Identity,
) -> None:
    # proves: I8, I1
    kate = await identity.users.create("kate@example.com", STRONG)
    # A Kelvin sign (U+212A) and full-width letters normalise to the plain address.
    for lookalike in ("\u212aate@example.com", "\uff4bate@example.com", "KATE@EXAMPLE.COM"):
        found = await identity.users.get_by_email(lookalike)
        assert found is not None and found.id == kate.id, lookalike
        with pytest.raises(ConflictError):
            await identity.users.create(lookalike, STRONG)
    assert (await identity.auth.authenticate("\u212aATE@example.com", STRONG)).id == kate.id
    # A capital I with a dot folds to i and a combining dot; a Cyrillic a mixed with Latin.
    for spoof in ("\u0130nfo@example.com", "p\u0430ypal@example.com", "a\u200bb@example.com"):
        with pytest.raises(InvalidInputError, match="pass for"):
            await identity.users.create(spoof, STRONG)
    # One script, even a non-Latin one, and accented Latin letters are addresses like any.
    assert (await identity.users.create("\u0438\u0432\u0430\u043d@example.com", STRONG)).email
    assert [u.id for u in (await identity.users.search(email="\u212aate")).items] == [kate.id]
    for field in ("email", "name", "role", "group"):
        with pytest.raises(InvalidInputError, match="control characters"):
            await identity.users.search(**{field: "a\x00b"})
    assert (
        await identity.users.create("Jos\u00e9@example.com", STRONG)
    ).email == "jos\u00e9@example.com"


async def test_two_admins_removing_each_other_leave_one(identity: Identity) -> None:
    # proves: I9
    one = await identity.users.create("one@example.com", STRONG, roles=["admin"])
    two = await identity.users.create("two@example.com", STRONG, roles=["admin"])
    results = await asyncio.gather(
        identity.users.update(one.id, roles=[], keep_role="admin"),
        identity.users.set_active(two.id, False, keep_role="admin"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ConflictError) for r in results) == 1, results
    assert (await identity.users.search(role="admin", status="active")).total == 1
    with pytest.raises(InvalidInputError, match="list"):
        await identity.users.update(one.id, roles=None)
