"""`Tenants.create(..., session=)` joins the caller's transaction: rolled back and committed
with the application's own writes, as a sign-up needs; without it, a transaction of its own.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy import func, select, text

from pgstack.audit import AuditLog
from pgstack.crypto import KeyRing, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import ConflictError, NotFoundError, TenantScopeError
from pgstack.identity import Identity
from pgstack.tenancy import Tenancy, TenantMembership, tenant_context
from pgstack.tokens import TokenVault

from .conftest import make_user
from .tenancy_rls_setup import ACME, GLOBEX, RlsApp

COUNTS = (
    "SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM tenant_memberships), "
    "(SELECT count(*) FROM audit_log), (SELECT count(*) FROM signups)"
)


async def counts(conn: asyncpg.Connection) -> tuple[int, ...]:
    """Tenants, memberships, audit entries and the application's sign-ups, as committed."""
    return tuple(await conn.fetchrow(COUNTS))


async def test_a_rolled_back_sign_up_leaves_no_tenant_membership_or_entry(
    pgstack_migrated_db: Database, tenancy: Tenancy, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: N1, N5
    db = pgstack_migrated_db
    ada = await make_user(identity, "ada@signup.example")
    before = await counts(outside)
    with pytest.raises(RuntimeError, match="payment declined"):
        async with db.transaction() as session:
            acme = await tenancy.tenants.create("TSIGNUP", "Acme", owner_id=ada.id, session=session)
            await session.execute(
                text("INSERT INTO signups VALUES (:email, :tenant)"),
                {"email": ada.email, "tenant": acme.id},
            )
            await AuditLog(db).record(
                "signup.completed", resource_type="tenant", resource_id=acme.id, session=session
            )
            # In the caller's transaction: the tenant and its owner are there ...
            owners = select(func.count()).where(
                TenantMembership.tenant_id == acme.id, TenantMembership.role == "owner"
            )
            assert await session.scalar(owners) == 1
            # ... and nowhere else before it commits: no transaction of create's own.
            assert await counts(outside) == before
            with pytest.raises(NotFoundError):
                await tenancy.tenants.get_by_external_id("TSIGNUP")
            acme_id = acme.id
            raise RuntimeError("payment declined")
    assert await counts(outside) == before
    with pytest.raises(NotFoundError):
        await tenancy.tenants.get_by_external_id("TSIGNUP")
    assert await tenancy.memberships.role_of(acme_id, ada.id) is None


async def test_a_committed_sign_up_keeps_the_tenant_its_owner_and_the_apps_rows(
    pgstack_migrated_db: Database, tenancy: Tenancy, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: N1, N5
    db = pgstack_migrated_db
    ada = await make_user(identity, "ada@signup.example")
    tenants, members, entries, signups = await counts(outside)
    async with db.transaction() as session:
        acme = await tenancy.tenants.create(
            "TSIGNUP", "Acme", plan="pro", owner_id=ada.id, session=session
        )
        await session.execute(
            text("INSERT INTO signups VALUES (:email, :tenant)"),
            {"email": ada.email, "tenant": acme.id},
        )
        await AuditLog(db).record(
            "signup.completed", resource_type="tenant", resource_id=acme.id, session=session
        )
    assert await counts(outside) == (tenants + 1, members + 1, entries + 1, signups + 1)
    stored = await tenancy.tenants.get_by_external_id("TSIGNUP")
    assert (stored.id, stored.name, stored.plan, stored.status) == (
        acme.id,
        "Acme",
        "pro",
        "active",
    )
    assert await tenancy.memberships.role_of(acme.id, ada.id) == "owner"
    assert await outside.fetchval("SELECT tenant_id FROM signups WHERE email = $1", ada.email) == (
        acme.id
    )
    [entry] = (await AuditLog(db).entries(action="signup.completed")).items
    assert entry["resource_id"] == str(acme.id)


async def test_a_refused_create_in_the_callers_transaction_says_why_and_undoes_it(
    pgstack_migrated_db: Database, tenancy: Tenancy, outside: asyncpg.Connection
) -> None:
    # proves: N1
    db = pgstack_migrated_db
    taken = await tenancy.tenants.create("TTAKEN", "Taken")
    before = await counts(outside)
    with pytest.raises(ConflictError) as refused:
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO signups VALUES ('bob@example.com', NULL)"))
            await tenancy.tenants.create("TTAKEN", "Again", session=session)
    assert refused.value.message == (
        "A tenant with the external id 'TTAKEN' already exists: look it up "
        "(tenants.get_by_external_id) instead of creating it again."
    )
    assert refused.value.constraint == "uq_tenants_external_id"
    ghost = uuid.uuid4()
    with pytest.raises(NotFoundError, match=f"^No user with id {ghost}.$"):
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO signups VALUES ('eve@example.com', NULL)"))
            await tenancy.tenants.create("TGHOST", "Ghost", owner_id=ghost, session=session)
    assert await counts(outside) == before
    assert [t.id for t in (await tenancy.tenants.list()).items] == [taken.id]


async def test_without_a_session_create_is_still_a_transaction_of_its_own(
    pgstack_migrated_db: Database, tenancy: Tenancy, identity: Identity, outside: asyncpg.Connection
) -> None:
    # proves: N1
    ada = await make_user(identity, "ada@alone.example")
    tenants, members, entries, signups = await counts(outside)
    with pytest.raises(RuntimeError):
        async with pgstack_migrated_db.transaction() as session:
            await session.execute(text("INSERT INTO signups VALUES ('ada@alone.example', NULL)"))
            alone = await tenancy.tenants.create("TALONE", "Alone", owner_id=ada.id)
            # Committed already, before the surrounding transaction ends.
            assert await counts(outside) == (tenants + 1, members + 1, entries, signups)
            raise RuntimeError("the caller's own work fails")
    assert await counts(outside) == (tenants + 1, members + 1, entries, signups)
    assert (await tenancy.tenants.get_by_external_id("TALONE")).id == alone.id
    assert await tenancy.memberships.role_of(alone.id, ada.id) == "owner"


# -- the vault's save in the caller's transaction, as the application role under RLS -------


async def test_a_token_saved_in_a_tenants_transaction_is_held_by_row_level_security(
    rls_app: RlsApp,
) -> None:
    # proves: T1, N3
    db = Database(rls_app.settings())
    vault = TokenVault(db, keys=KeyRing.parse(generate_key("rls")))
    admin = await asyncpg.connect(asyncpg_dsn(rls_app.admin.set(database=rls_app.app.database)))
    stored = "SELECT tenant_id, version FROM oauth_tokens"  # as a superuser: every row
    try:
        await db.connect()
        with tenant_context(ACME):
            # Rolled back with the transaction ...
            with pytest.raises(RuntimeError):
                async with db.transaction() as session:
                    await vault.save("crm", "acme", "at-0", "rt-0", session=session)
                    raise RuntimeError("undo")
            assert await admin.fetch(stored) == []
            # ... kept with its commit, in the tenant the transaction began in.
            async with db.transaction() as session:
                saved = await vault.save("crm", "acme", "at-1", "rt-1", session=session)
            token = await vault.get("crm", "acme")
        assert (token.access_token, token.tenant_id, saved.tenant_id) == ("at-1", ACME, ACME)
        assert [tuple(r) for r in await admin.fetch(stored)] == [(ACME, 1)]
        # A transaction begun in another tenant cannot take a token for ACME.
        with pytest.raises(TenantScopeError, match="row-level security"), tenant_context(GLOBEX):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))  # it begins in GLOBEX
                with tenant_context(ACME):
                    await vault.save("crm", "acme", "at-2", "rt-2", session=session)
        assert [tuple(r) for r in await admin.fetch(stored)] == [(ACME, 1)]
        with tenant_context(ACME):
            assert (await vault.get("crm", "acme")).access_token == "at-1"
    finally:
        await admin.close()
        await db.disconnect()
