"""The `session=` of users.create, api_keys.create, tenants.create and TokenVault.save, as
callers misuse it: two sign-ups with one address at once, and a transaction that already
failed. Each is a pgstack error with a sentence to act on, not the driver's exception."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from pgstack.crypto import KeyRing, generate_key
from pgstack.db.database import Database
from pgstack.errors import ConflictError, PgStackError
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy
from pgstack.tokens import TokenVault

from .conftest import STRONG

TAKEN = (
    "A user with the e-mail address ada@example.com already exists; sign in, or reset the password."
)
FAILED = "The transaction already failed on an earlier statement"


async def _two_sign_ups(
    db: Database, identity: Identity, emails: tuple[str, str], username: str | None
) -> list[User | BaseException]:
    """Two transactions create a user each; the first commits only after the second has
    checked that the address (or username) is free and is waiting on the first's row."""
    created = asyncio.Event()
    commit = asyncio.Event()

    async def first() -> User:
        async with db.transaction() as session:
            user = await identity.users.create(
                emails[0], STRONG, username=username, session=session
            )
            created.set()
            await commit.wait()
            return user

    async def second() -> User:
        await created.wait()
        async with db.transaction() as session:
            return await identity.users.create(
                emails[1], STRONG, username=username, session=session
            )

    async def release() -> None:
        await created.wait()
        await asyncio.sleep(0.5)
        commit.set()

    results = await asyncio.gather(first(), second(), release(), return_exceptions=True)
    return [r for r in results[:2]]


async def test_two_sign_ups_with_one_address_at_once_give_the_second_the_taken_message(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I1 (the second was "A User with the same unique value already exists
    # (constraint uq_users_email)": the index's name instead of what to do)
    first, second = await _two_sign_ups(
        pgstack_migrated_db, identity, ("ada@example.com", "ADA@example.com"), None
    )
    assert isinstance(first, User)
    assert isinstance(second, ConflictError)
    assert second.message == TAKEN
    assert await outside.fetchval("SELECT count(*) FROM users") == 1


async def test_two_sign_ups_with_one_username_at_once_give_the_second_the_taken_message(
    pgstack_migrated_db: Database, identity: Identity
) -> None:
    # proves: I1
    first, second = await _two_sign_ups(
        pgstack_migrated_db, identity, ("ada@example.com", "bob@example.com"), "ada.l"
    )
    assert isinstance(first, User)
    assert isinstance(second, ConflictError)
    assert second.message == "The username ada.l is taken; pick another."


@pytest.fixture
async def owner(identity: Identity) -> User:
    return await identity.users.create("owner@example.com", STRONG)


def _writes(
    db: Database, identity: Identity, owner: User
) -> dict[str, Callable[[AsyncSession], Awaitable[Any]]]:
    vault = TokenVault(db, keys=KeyRing.parse(generate_key("v1")))
    return {
        "users.create": lambda s: identity.users.create("ada@example.com", STRONG, session=s),
        "api_keys.create": lambda s: identity.api_keys.create(owner.id, "ci", session=s),
        "tenants.create": lambda s: Tenancy(db).tenants.create("T1", "Acme", session=s),
        "TokenVault.save": lambda s: vault.save("github", "ada", "gho_SECRET_TOKEN", session=s),
    }


@pytest.mark.parametrize(
    "write", ["users.create", "api_keys.create", "tenants.create", "TokenVault.save"]
)
async def test_a_transaction_that_already_failed_is_named_as_such(
    pgstack_migrated_db: Database,
    identity: Identity,
    owner: User,
    outside: asyncpg.Connection,
    write: str,
) -> None:
    # proves: I1, I5, N1, T1 (it was SQLAlchemy's DBAPIError, "current transaction is aborted")
    db = pgstack_migrated_db
    before = await outside.fetchval("SELECT count(*) FROM audit_log")
    with pytest.raises(PgStackError) as caught:
        async with db.transaction() as session:
            with pytest.raises(Exception, match="division by zero"):
                await session.execute(text("SELECT 1/0"))  # caught, and the caller goes on
            await _writes(db, identity, owner)[write](session)
    assert type(caught.value) is PgStackError
    assert caught.value.message.startswith(FAILED)
    assert "roll it back" in caught.value.message and "begin_nested" in caught.value.message
    assert "SECRET" not in str(caught.value)
    counts = await outside.fetchrow(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM api_keys),"
        " (SELECT count(*) FROM tenants), (SELECT count(*) FROM oauth_tokens)"
    )
    assert tuple(counts) == (1, 0, 0, 0)
    assert await outside.fetchval("SELECT count(*) FROM audit_log") == before


async def test_a_failed_write_in_a_savepoint_leaves_the_transaction_usable(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I1 (what the message advises works: a taken address inside begin_nested)
    await identity.users.create("ada@example.com", STRONG)
    async with pgstack_migrated_db.transaction() as session:
        with pytest.raises(ConflictError, match="already exists"):
            async with session.begin_nested():
                await identity.users.create("ada@example.com", STRONG, session=session)
        await identity.users.create("bob@example.com", STRONG, session=session)
    assert await outside.fetchval("SELECT count(*) FROM users") == 2


@pytest.mark.parametrize("write", ["users.create", "api_keys.create", "tenants.create"])
async def test_the_callers_pending_row_that_fails_is_the_callers_error_and_says_so(
    pgstack_migrated_db: Database,
    identity: Identity,
    owner: User,
    outside: asyncpg.Connection,
    write: str,
) -> None:
    # proves: I1, I5, N1 (a pending user with a taken address failed on the same INSERT INTO
    # users as create's own would: nothing told the two apart)
    db = pgstack_migrated_db
    with pytest.raises(IntegrityError) as caught:
        async with db.transaction() as session:
            session.add(User(email="owner@example.com", password_hash="$argon2id$v=19$SECRET"))
            await _writes(db, identity, owner)[write](session)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "the session's own pending changes, flushed before " + write in notes
    assert f"this is not an error of {write}" in notes
    assert "SECRET" not in str(caught.value) + notes  # the engine hides bound parameters
    assert await outside.fetchval("SELECT count(*) FROM users") == 1
