"""`Users.create(..., session=)` joins the caller's transaction: a sign-up creates the user,
their workspace and the application's own rows all together or not at all; without it,
`create` is a transaction of its own as before.
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import func, select, text

from pgstack.audit import AuditLog
from pgstack.db.database import Database
from pgstack.errors import AuthenticationError, ConflictError, NotFoundError
from pgstack.identity import Identity, IdentityConfig, PasswordHasher, User, Users
from pgstack.tenancy import Tenancy, TenantMembership

from .conftest import OTHER_STRONG, STRONG

COUNTS = (
    "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM tenants), "
    "(SELECT count(*) FROM tenant_memberships), (SELECT count(*) FROM audit_log), "
    "(SELECT count(*) FROM signups)"
)
TAKEN = (
    "A user with the e-mail address ada@example.com already exists; sign in, or reset the password."
)


@pytest.fixture
def tenancy(pgstack_migrated_db: Database) -> Tenancy:
    return Tenancy(pgstack_migrated_db)


async def counts(conn: asyncpg.Connection) -> tuple[int, ...]:
    """Users, tenants, memberships, audit entries and the app's sign-ups, as committed."""
    return tuple(await conn.fetchrow(COUNTS))


async def test_a_rolled_back_transaction_leaves_no_user_and_no_entry(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I1
    db = pgstack_migrated_db
    before = await counts(outside)
    with pytest.raises(RuntimeError, match="payment declined"):
        async with db.transaction() as session:
            ada = await identity.users.create(
                "Ada@Example.com", STRONG, name="Ada", username="ada.l", session=session
            )
            await AuditLog(db).record(
                "signup.completed", resource_type="user", resource_id=ada.id, session=session
            )
            # The caller's transaction sees the new user ...
            assert await session.scalar(select(func.count()).where(User.id == ada.id)) == 1
            # ... and nothing outside it does before it ends: create has no transaction of
            # its own, and wrote nothing elsewhere.
            assert await counts(outside) == before
            assert await identity.users.get_by_email("ada@example.com") is None
            raise RuntimeError("payment declined")
    assert await counts(outside) == before
    assert await identity.users.get_by_email("ada@example.com") is None
    assert await identity.users.get_by_username("ada.l") is None
    # The address and the username are free again.
    again = await identity.users.create("ada@example.com", STRONG, username="ada.l")
    assert (again.email, again.username) == ("ada@example.com", "ada.l")


async def test_a_committed_transaction_keeps_the_user_and_the_entry(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I1, I2
    db = pgstack_migrated_db
    users, tenants, members, entries, signups = await counts(outside)
    async with db.transaction() as session:
        ada = await identity.users.create(
            "Ada@Example.com", STRONG, name="Ada", roles=["admin"], verified=True, session=session
        )
        await AuditLog(db).record(
            "signup.completed", resource_type="user", resource_id=ada.id, session=session
        )
    # The user and the application's entry; create itself writes no entry.
    assert await counts(outside) == (users + 1, tenants, members, entries + 1, signups)
    stored = await identity.users.get(ada.id)
    assert (stored.email, stored.name, stored.roles, stored.is_verified) == (
        "ada@example.com",
        "Ada",
        ["admin"],
        True,
    )
    assert stored.password_hash is not None and stored.password_hash.startswith("$argon2id$")
    assert (await identity.auth.login("ada@example.com", STRONG)).user.id == ada.id
    [entry] = (await AuditLog(db).entries(action="signup.completed")).items
    assert entry["resource_id"] == str(ada.id)


async def test_a_sign_up_creates_the_user_the_workspace_and_the_apps_row_or_none_of_them(
    pgstack_migrated_db: Database, identity: Identity, tenancy: Tenancy, outside: asyncpg.Connection
) -> None:
    # proves: I1, N1, N5
    db = pgstack_migrated_db
    users, tenants, members, entries, signups = await counts(outside)

    async def sign_up(email: str, external_id: str, fail: bool) -> None:
        async with db.transaction() as session:
            user = await identity.users.create(email, STRONG, session=session)
            acme = await tenancy.tenants.create(
                external_id, "Acme", owner_id=user.id, session=session
            )
            await session.execute(
                text("INSERT INTO signups VALUES (:email, :tenant)"),
                {"email": user.email, "tenant": acme.id},
            )
            owners = select(func.count()).where(
                TenantMembership.tenant_id == acme.id,
                TenantMembership.user_id == user.id,
                TenantMembership.role == "owner",
            )
            assert await session.scalar(owners) == 1
            assert await counts(outside) == (users, tenants, members, entries, signups)
            if fail:
                raise RuntimeError("payment declined")

    with pytest.raises(RuntimeError, match="payment declined"):
        await sign_up("ada@acme.example", "TACME", fail=True)
    assert await counts(outside) == (users, tenants, members, entries, signups)
    assert await identity.users.get_by_email("ada@acme.example") is None
    with pytest.raises(NotFoundError):
        await tenancy.tenants.get_by_external_id("TACME")

    await sign_up("ada@acme.example", "TACME", fail=False)
    assert await counts(outside) == (users + 1, tenants + 1, members + 1, entries, signups + 1)
    ada = await identity.users.get_by_email("ada@acme.example")
    acme = await tenancy.tenants.get_by_external_id("TACME")
    assert ada is not None
    assert await tenancy.memberships.role_of(acme.id, ada.id) == "owner"
    assert await outside.fetchval("SELECT tenant_id FROM signups WHERE email = $1", ada.email) == (
        acme.id
    )


async def test_a_taken_address_or_username_is_refused_alike_with_and_without_a_session(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I1
    db = pgstack_migrated_db
    await identity.users.create("ada@example.com", STRONG, username="ada.l")
    with pytest.raises(ConflictError) as alone:
        await identity.users.create("ADA@example.com", OTHER_STRONG)
    with pytest.raises(ConflictError) as name_alone:
        await identity.users.create("bob@example.com", OTHER_STRONG, username="Ada.L")
    assert alone.value.message == TAKEN
    assert name_alone.value.message == "The username ada.l is taken; pick another."
    before = await counts(outside)

    # In the caller's transaction: the same errors, found before anything is written, so
    # the application's own row written before them is still committed with it.
    async with db.transaction() as session:
        await session.execute(text("INSERT INTO signups VALUES ('ada@example.com', NULL)"))
        with pytest.raises(ConflictError) as joined:
            await identity.users.create("ADA@example.com", OTHER_STRONG, session=session)
        with pytest.raises(ConflictError) as name_joined:
            await identity.users.create(
                "bob@example.com", OTHER_STRONG, username="Ada.L", session=session
            )
    assert (joined.value.message, joined.value.status_code) == (alone.value.message, 409)
    assert name_joined.value.message == name_alone.value.message
    users, tenants, members, entries, signups = before
    assert await counts(outside) == (users, tenants, members, entries, signups + 1)

    # A user created earlier in the same transaction, not yet committed, is taken too.
    with pytest.raises(ConflictError) as twice:
        async with db.transaction() as session:
            await identity.users.create("cy@example.com", STRONG, session=session)
            await identity.users.create("Cy@Example.com", OTHER_STRONG, session=session)
    assert twice.value.message == TAKEN.replace("ada@", "cy@")
    assert await identity.users.get_by_email("cy@example.com") is None
    assert await counts(outside) == (users, tenants, members, entries, signups + 1)


async def test_without_a_session_create_is_still_a_transaction_of_its_own(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I1
    users, tenants, members, entries, signups = await counts(outside)
    with pytest.raises(RuntimeError):
        async with pgstack_migrated_db.transaction() as session:
            await session.execute(text("INSERT INTO signups VALUES ('ada@alone.example', NULL)"))
            ada = await identity.users.create("ada@alone.example", STRONG)
            # Committed already, before the surrounding transaction ends.
            assert await counts(outside) == (users + 1, tenants, members, entries, signups)
            raise RuntimeError("the caller's own work fails")
    assert await counts(outside) == (users + 1, tenants, members, entries, signups)
    stored = await identity.users.get_by_email("ada@alone.example")
    assert stored is not None and stored.id == ada.id


class WatchingHasher(PasswordHasher):
    """Argon2id as usual; notes which transactions the test's database has open meanwhile."""

    def __init__(self, config: IdentityConfig, outside: asyncpg.Connection) -> None:
        super().__init__(config)
        self.outside = outside
        self.open: list[int] = []

    async def ahash(self, password: str) -> str:
        self.open.append(
            await self.outside.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND xact_start IS NOT NULL"
            )
        )
        return await super().ahash(password)


async def test_the_password_is_hashed_before_the_transaction_touches_the_database(
    pgstack_migrated_db: Database, outside: asyncpg.Connection
) -> None:
    # proves: I2
    config = IdentityConfig()
    hasher = WatchingHasher(config, outside)
    users = Users(pgstack_migrated_db, config, hasher)
    await users.create("ada@example.com", STRONG)
    async with pgstack_migrated_db.transaction() as session:
        await users.create("bob@example.com", STRONG, session=session)
    assert hasher.open == [0, 0]
    # Once the caller's transaction has begun, it stays open while the hash is computed.
    async with pgstack_migrated_db.transaction() as session:
        await session.execute(text("INSERT INTO signups VALUES ('cy@example.com', NULL)"))
        await users.create("cy@example.com", STRONG, session=session)
    assert hasher.open == [0, 0, 1]


async def test_an_api_key_in_the_callers_transaction_goes_with_it(
    pgstack_migrated_db: Database, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: I5 (the key and its api_key.created entry commit or roll back with the caller)
    db = pgstack_migrated_db
    ada = await identity.users.create("ada@example.com", STRONG)
    keys_sql = "SELECT count(*) FROM api_keys"
    entries_sql = "SELECT count(*) FROM audit_log WHERE action = 'api_key.created'"
    keys, entries = await outside.fetchval(keys_sql), await outside.fetchval(entries_sql)
    with pytest.raises(RuntimeError, match="not shown"):
        async with db.transaction() as session:
            issued = await identity.api_keys.create(ada.id, "ci", session=session)
            assert await outside.fetchval(keys_sql) == keys  # nothing outside it yet
            raise RuntimeError("not shown")
    assert (await outside.fetchval(keys_sql), await outside.fetchval(entries_sql)) == (
        keys,
        entries,
    )
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(issued.key)
    async with db.transaction() as session:
        kept = await identity.api_keys.create(ada.id, "ci", session=session)
    assert (await outside.fetchval(keys_sql), await outside.fetchval(entries_sql)) == (
        keys + 1,
        entries + 1,
    )
    assert (await identity.api_keys.verify(kept.key)).api_key.id == kept.api_key.id
