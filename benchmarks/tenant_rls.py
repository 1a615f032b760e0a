"""W12's data: a tenant-scoped table under row-level security and a role that RLS applies to.

The benchmark's own connection is usually a superuser's, which row-level security never
applies to; pgstack's W12 contender connects as `pgstack_bench_rls` instead, a plain role
like the application role `pgstack db init` makes.
"""

from __future__ import annotations

import uuid

import asyncpg
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from benchmarks.contenders import DataSet
from benchmarks.models import TENANT_ITEMS
from pgstack import Database, Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.tenancy import enable_tenant_rls

ROLE, PASSWORD = "pgstack_bench_rls", "pgstack-bench-rls"
TENANTS = 2


def _protect(conn: Connection) -> None:
    # As an application's migration does it (the table exists: PgBase made it).
    enable_tenant_rls(Operations(MigrationContext.configure(conn)), TENANT_ITEMS)


async def prepare_tenant_rls(url: URL, rows: int, data: DataSet) -> None:
    """Protect the tenant table, fill it for two tenants, and give W12 a role under RLS."""
    db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
    await db.connect()
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_protect)
    finally:
        await db.disconnect()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tenants = [uuid.uuid4() for _ in range(TENANTS)]
        records = [(uuid.uuid4(), tenants[i % TENANTS], f"item {i}", i) for i in range(rows)]
        await conn.copy_records_to_table(
            TENANT_ITEMS, records=records, columns=["id", "tenant_id", "name", "qty"]
        )
        data.tenant_rows[:] = [(tenant, id_) for id_, tenant, _, _ in records]
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE)
        if not exists:
            await conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        await conn.execute(f"GRANT SELECT ON {TENANT_ITEMS} TO {ROLE}")
        await conn.execute(f"VACUUM ANALYZE {TENANT_ITEMS}")
    finally:
        await conn.close()
    data.rls_url = url.set(username=ROLE, password=PASSWORD)
