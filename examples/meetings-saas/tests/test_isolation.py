"""Row-level security and the immutable audit, as an attacker with raw SQL meets them.

The connections are the service's own: the application role of `db init`, which owns
no table and has no BYPASSRLS (a superuser or the owner would bypass what is tested here).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from conftest import Install, MakeUser
from sqlalchemy.engine import URL

from pgstack import Database
from pgstack.audit import AuditLog
from pgstack.migrations import MigrationProject
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift
from pgstack.testing.plugin import AppRoleDatabase, asyncpg_dsn

HERE = Path(__file__).resolve().parents[1]
SET_TENANT = "SELECT set_config('pgstack.tenant_id', $1, true)"
TABLES = ("meetings", "crm_connections", "account_mappings", "oauth_tokens")


async def fill_workspace(client: httpx.AsyncClient, make_user: MakeUser, install: Install) -> str:
    """A workspace with a row in each of its tables, made through the API; its id."""
    owner = await make_user("owner")
    ws = (await install(owner))["id"]
    base, headers = f"/workspaces/{ws}", owner.headers
    made = [
        await client.post(
            f"{base}/meetings", json={"external_id": "m", "title": "Board"}, headers=headers
        ),
        await client.post(
            f"{base}/crm-connections",
            json={"provider": "hubspot", "account": "p1", "access_token": "tok"},
            headers=headers,
        ),
        await client.post(
            f"{base}/account-mappings/import",
            json=[{"domain": f"{ws[-8:]}.example", "crm_account_id": "001"}],
            headers=headers,
        ),
    ]
    assert [a.status_code for a in made] == [201, 201, 200], [a.text for a in made]
    return str(ws)


@pytest.fixture
async def as_app(
    pgstack_app_role_database: AppRoleDatabase,
) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_app_role_database.app))
    try:
        yield conn
    finally:
        await conn.close()


async def test_raw_sql_as_the_service_role_cannot_cross_workspaces(
    client: httpx.AsyncClient, make_user: MakeUser, install: Install, as_app: asyncpg.Connection
) -> None:
    # proves: X3, N3 (cross-tenant reads and writes fail even in raw SQL)
    acme = uuid.UUID(await fill_workspace(client, make_user, install))
    globex = uuid.UUID(await fill_workspace(client, make_user, install))
    conn = as_app
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert (role["rolsuper"], role["rolbypassrls"]) == (False, False)
    owned = await conn.fetchval(
        "SELECT count(*) FROM pg_tables WHERE tablename = ANY($1) AND tableowner = current_user",
        list(TABLES),
    )
    assert owned == 0

    # No workspace set: nothing of anyone's is visible.
    for table in TABLES:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    async with conn.transaction():
        await conn.execute(SET_TENANT, str(acme))
        for table in TABLES:
            seen = await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")
            assert [r["tenant_id"] for r in seen] == [acme], table
            # Asking for the other workspace by name finds nothing; changing it touches nothing.
            named = f"SELECT count(*) FROM {table} WHERE tenant_id = $1"
            assert await conn.fetchval(named, globex) == 0, table
            touched = f"UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1"
            assert await conn.execute(touched, globex) == "UPDATE 0", table
            assert await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", globex) == (
                "DELETE 0"
            )
    forged = [
        "INSERT INTO meetings (id, tenant_id, external_id, title) "
        "VALUES (gen_random_uuid(), $1, 'planted', 'planted')",
        "INSERT INTO account_mappings (id, tenant_id, domain, crm_account_id) "
        "VALUES (gen_random_uuid(), $1, 'evil.example', '666')",
        "INSERT INTO crm_connections (id, tenant_id, provider, account) "
        "VALUES (gen_random_uuid(), $1, 'hubspot', 'evil')",
        "UPDATE meetings SET tenant_id = $1",  # moving one's own rows over
    ]
    for statement in forged:
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(acme))
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(statement, globex)
    # With no workspace set, a forged insert is refused too.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await conn.execute(forged[0], globex)
    # The application role cannot switch the protection off.
    for statement in (
        "ALTER TABLE meetings DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE meetings NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY pgstack_tenant_isolation ON meetings",
        "SET row_security = off; SELECT count(*) FROM meetings",
    ):
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(statement)
    async with conn.transaction():
        await conn.execute(SET_TENANT, str(globex))
        assert await conn.fetchval("SELECT count(*) FROM meetings") == 1
        assert await conn.fetchval("SELECT title FROM meetings") == "Board"


async def test_the_audit_log_records_every_change_and_refuses_edits(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    install: Install,
    as_app: asyncpg.Connection,
    db: Database,
) -> None:
    # proves: X3, A2, A3 (audited tables; UPDATE/DELETE/TRUNCATE refused; chain verifies)
    owner = await make_user("owner")
    ws = uuid.UUID((await install(owner))["id"])
    base = f"/workspaces/{ws}"
    meeting = (
        await client.post(
            f"{base}/meetings", json={"external_id": "a", "title": "Audit"}, headers=owner.headers
        )
    ).json()
    await client.post(f"{base}/meetings/{meeting['id']}/claim", headers=owner.headers)

    conn = as_app
    async with conn.transaction():
        await conn.execute(SET_TENANT, str(ws))
        rows = await conn.fetch(
            "SELECT action, actor_id, changes FROM audit_log "
            "WHERE resource_type = 'meetings' AND resource_id = $1 ORDER BY seq",
            meeting["id"],
        )
    assert [r["action"] for r in rows] == ["meetings.insert", "meetings.update"]
    assert {r["actor_id"] for r in rows} == {str(owner.user_id)}
    assert '"status": {"new": "processing", "old": "pending"}' in rows[1]["changes"]
    for statement in (
        "UPDATE audit_log SET action = 'nothing'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(ws))
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.execute(statement)
        assert refused.value.sqlstate == "42501", statement
    report = await AuditLog(db).verify(ws)
    assert report.ok and report.checked >= 3


@pytest.mark.parametrize("check", ["roundtrip", "drift"])
def test_migrations(check: str, pgstack_empty_url: URL, pgstack_migrated_url: URL) -> None:
    # proves: X3, G2, G4 (the app's revision on top of pgstack's: up, down, up; no drift)
    project = MigrationProject.from_pyproject(HERE)
    if check == "roundtrip":
        assert_migrations_roundtrip(pgstack_empty_url, project=project)
    else:
        assert_no_drift(pgstack_migrated_url, project=project)
