"""Row-level security as an attacker with raw SQL meets it: the application role, no repository.

Every test runs on a database made by `db init` and migrated by the owner (see conftest.py);
the service's connections are the application role's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from tenancy_rls_setup import ACME, GLOBEX, RlsApp, write_project

from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.db.doctor import diagnose
from pgstack.db.tenant import CATALOG_SQL, DIRECTORY_MARK
from pgstack.errors import TenantScopeError
from pgstack.orm import all_tenants, tenant_context
from pgstack.testing.assertions import assert_migrations_roundtrip

SET_TENANT = "SELECT set_config('pgstack.tenant_id', $1, true)"


@pytest.fixture
async def app_conn(rls_app: RlsApp) -> AsyncIterator[asyncpg.Connection]:
    """A raw asyncpg connection as the application role, with a meeting in each tenant."""
    conn = await asyncpg.connect(asyncpg_dsn(rls_app.app))
    try:
        for tenant, title in ((ACME, "acme plan"), (GLOBEX, "globex plan")):
            async with conn.transaction():
                await conn.execute(SET_TENANT, str(tenant))
                await conn.execute(
                    "INSERT INTO meetings (id, tenant_id, title) VALUES ($1, $2, $3)",
                    uuid.uuid4(),
                    tenant,
                    title,
                )
        yield conn
    finally:
        await conn.close()


async def test_raw_sql_sees_and_writes_only_the_tenant_set_in_the_transaction(
    app_conn: asyncpg.Connection,
) -> None:
    # proves: N3
    conn = app_conn
    async with conn.transaction():
        await conn.execute(SET_TENANT, str(ACME))
        rows = await conn.fetch("SELECT tenant_id, title FROM meetings")
        assert [(r["tenant_id"], r["title"]) for r in rows] == [(ACME, "acme plan")]
        # Naming the other tenant outright finds nothing either.
        assert (
            await conn.fetchval("SELECT count(*) FROM meetings WHERE tenant_id = $1", GLOBEX) == 0
        )
        # Updates and deletes of the other tenant's rows touch nothing.
        assert (
            await conn.execute("UPDATE meetings SET title = 'mine' WHERE tenant_id = $1", GLOBEX)
            == "UPDATE 0"
        )
        assert await conn.execute("DELETE FROM meetings WHERE tenant_id = $1", GLOBEX) == "DELETE 0"
    for attack in (
        # A row for the other tenant, and moving one's own row over to it.
        (
            "INSERT INTO meetings (id, tenant_id, title) VALUES ($1, $2, 'planted')",
            uuid.uuid4(),
            GLOBEX,
        ),
        ("UPDATE meetings SET tenant_id = $1", GLOBEX),
    ):
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(ACME))
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(*attack)
    async with conn.transaction():
        await conn.execute(SET_TENANT, str(GLOBEX))
        rows = await conn.fetch("SELECT tenant_id, title FROM meetings")
        assert [(r["tenant_id"], r["title"]) for r in rows] == [(GLOBEX, "globex plan")]


async def test_with_no_tenant_set_nothing_is_visible_and_nothing_can_be_written(
    app_conn: asyncpg.Connection,
) -> None:
    # proves: N3
    conn = app_conn
    assert await conn.fetchval("SELECT count(*) FROM meetings") == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await conn.execute(
            "INSERT INTO meetings (id, tenant_id, title) VALUES ($1, $2, 'x')", uuid.uuid4(), ACME
        )
    # The setting ends with its transaction: the connection carries nothing to its next user
    # (what makes it safe behind PgBouncer's transaction pooling).
    async with conn.transaction():
        await conn.execute(SET_TENANT, str(ACME))
        assert await conn.fetchval("SELECT count(*) FROM meetings") == 1
    assert await conn.fetchval("SELECT count(*) FROM meetings") == 0
    assert await conn.fetchval("SELECT current_setting('pgstack.tenant_id', true)") in ("", None)
    # An empty or malformed tenant never widens what is visible.
    async with conn.transaction():
        await conn.execute(SET_TENANT, "")
        assert await conn.fetchval("SELECT count(*) FROM meetings") == 0
    async with conn.transaction():
        await conn.execute(SET_TENANT, "' OR true --")
        with pytest.raises(asyncpg.InvalidTextRepresentationError):
            await conn.fetchval("SELECT count(*) FROM meetings")


async def test_the_application_role_cannot_switch_security_off(
    app_conn: asyncpg.Connection,
) -> None:
    # proves: N3, O6
    conn = app_conn
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert tuple(role) == (False, False)
    for attempt in (
        "ALTER TABLE meetings DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE meetings NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY pgstack_tenant_isolation ON meetings",
        "CREATE POLICY open ON meetings USING (true)",
        "ALTER ROLE CURRENT_USER BYPASSRLS",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(attempt)
    # row_security = off makes a query that RLS would filter an error, not a bypass.
    async with conn.transaction():
        await conn.execute("SET LOCAL row_security = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM meetings")


async def test_migrations_ran_as_the_owner_and_every_tenant_table_is_protected(
    rls_app: RlsApp,
) -> None:
    # proves: N3, O6
    conn = await asyncpg.connect(asyncpg_dsn(rls_app.app))
    try:
        owners = {
            r["tableowner"]
            for r in await conn.fetch(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert owners == {rls_app.owner.username}
        catalog = {r["table_name"]: r for r in await conn.fetch(CATALOG_SQL)}
        directories = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relkind = 'r'"
                " AND obj_description(oid, 'pg_class') LIKE $1 || '%'",
                DIRECTORY_MARK,
            )
        }
    finally:
        await conn.close()
    # The tables a tenant is resolved from are the only ones left out, and only by their mark.
    assert directories == {"tenant_memberships", "tenant_api_keys", "external_identities"}
    assert not directories & set(catalog)
    # pgstack's own tenant-scoped tables and the application's, each enabled, forced, one policy.
    assert {"oauth_tokens", "token_refresh_audit", "meetings"} <= set(catalog)
    unprotected = [
        name
        for name, row in catalog.items()
        if not (row["enabled"] and row["forced"] and row["policies"] == 1)
    ]
    assert unprotected == []


async def test_forced_security_holds_the_owner_too(
    rls_app: RlsApp, app_conn: asyncpg.Connection
) -> None:
    # proves: N3
    owner = await asyncpg.connect(asyncpg_dsn(rls_app.owner))
    try:
        assert await owner.fetchval("SELECT count(*) FROM meetings") == 0
        async with owner.transaction():
            await owner.execute(SET_TENANT, str(GLOBEX))
            assert await owner.fetchval("SELECT count(*) FROM meetings") == 1
    finally:
        await owner.close()


async def test_pgstack_sessions_transactions_and_run_set_the_tenant_per_transaction(
    rls_app: RlsApp, app_conn: asyncpg.Connection
) -> None:
    # proves: N2, N3
    count = text("SELECT count(*) FROM meetings")
    titles = text("SELECT title FROM meetings ORDER BY title")
    # One connection in the pool: every step below reuses the one before it's connection.
    db = Database(rls_app.settings(database_pool_size=1, read_pool_size=1))
    async with db:
        with tenant_context(ACME):
            async with db.transaction() as session:
                assert (await session.execute(titles)).scalars().all() == ["acme plan"]
                await session.execute(
                    text("INSERT INTO meetings (id, tenant_id, title) VALUES (:id, :t, 'second')"),
                    {"id": uuid.uuid4(), "t": ACME},
                )
            async with db.session() as session:  # autobegin
                assert (await session.execute(count)).scalar() == 2
            assert await db.run(count) == [(2,)]
            rows = await db.run(
                text(
                    "INSERT INTO meetings (id, tenant_id, title) VALUES (:id, :t, 'ran') "
                    "RETURNING title"
                ),
                {"id": uuid.uuid4(), "t": ACME},
            )
            assert rows == [("ran",)]
            with pytest.raises(TenantScopeError, match="row-level security"):
                async with db.transaction() as session:
                    await session.execute(
                        text("INSERT INTO meetings (id, tenant_id, title) VALUES (:id, :t, 'x')"),
                        {"id": uuid.uuid4(), "t": GLOBEX},
                    )
        with tenant_context(GLOBEX):
            assert await db.run(titles) == [("globex plan",)]
        # The same connection, no tenant: nothing was left on it.
        assert await db.run(count) == [(0,)]
        async with db.session() as session:
            assert (await session.execute(count)).scalar() == 0
        # all_tenants() lifts the repository's filter, not the database's: the application
        # role still sees no tenant's rows (maintenance across tenants: see docs/tenancy-rls.md).
        with all_tenants():
            assert await db.run(count) == [(0,)]


async def test_an_autocommit_transaction_does_not_carry_the_tenant(
    rls_app: RlsApp, app_conn: asyncpg.Connection
) -> None:
    # proves: N3
    # AUTOCOMMIT runs each statement in a transaction of its own, so a setting made for the
    # transaction is gone before the read: it fails closed, with no rows.
    db = Database(rls_app.settings())
    async with db:
        with tenant_context(ACME):

            async def read(session: object) -> int:
                return int((await session.execute(text("SELECT count(*) FROM meetings"))).scalar())  # type: ignore[attr-defined]

            assert await db.run_in_transaction(read, isolation="autocommit") == 0
            assert await db.run_in_transaction(read, isolation="read_committed") == 1


def test_the_helper_round_trips_in_an_application_migration(
    pgstack_empty_url: URL, tmp_path: Path
) -> None:
    # proves: N3, G2
    project = write_project(tmp_path / "rlsapp")
    assert_migrations_roundtrip(pgstack_empty_url, project=project)


async def test_the_doctor_names_a_tenant_table_that_rls_does_not_guard(rls_app: RlsApp) -> None:
    # proves: N3, O1
    db = Database(rls_app.settings())
    async with db:
        assert [f for f in await diagnose(db) if f.id.startswith("tenancy")] == []
        owner = await asyncpg.connect(asyncpg_dsn(rls_app.owner))
        try:
            await owner.execute("ALTER TABLE meetings NO FORCE ROW LEVEL SECURITY")
            await owner.execute("CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid)")
        finally:
            await owner.close()
        found = {f.object: f for f in await diagnose(db) if f.id == "tenancy.rls-missing"}
    assert set(found) == {"table meetings", "table notes"}
    assert found["table meetings"].evidence.endswith("not forced")
    assert found["table notes"].evidence.endswith("not enabled, forced, a policy")
    assert found["table notes"].severity == "error"
    assert "enable_tenant_rls(op, 'notes')" in found["table notes"].fix


async def test_a_tenant_that_is_not_a_uuid_is_refused_before_any_statement(
    rls_app: RlsApp,
) -> None:
    # proves: N2, N3
    db = Database(rls_app.settings())
    async with db:
        for bad in ("acme' OR true --", "", 42):
            with tenant_context(bad):
                with pytest.raises(TenantScopeError, match="not a UUID") as info:
                    await db.run(text("SELECT count(*) FROM meetings"))
                assert info.value.status_code == 403
                with pytest.raises(TenantScopeError, match="not a UUID"):
                    async with db.transaction() as session:
                        await session.execute(text("SELECT 1"))
        # A UUID given as text is the same tenant.
        with tenant_context(str(ACME).upper()):
            assert await db.run(text("SELECT current_setting('pgstack.tenant_id')")) == [
                (str(ACME),)
            ]
