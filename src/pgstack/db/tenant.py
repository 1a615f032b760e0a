"""The tenant in the database: `pgstack.tenant_id`, set per transaction, read by RLS policies.

Row-level security policies (`pgstack.tenancy.enable_tenant_rls`) compare each row's
`tenant_id` with `NULLIF(current_setting('pgstack.tenant_id', true), '')::uuid`. pgstack puts
the tenant of `tenant_context()` there with `set_config(..., true)`: local to the
transaction, so nothing is left on a connection that goes back to a pool (pgstack's,
SQLAlchemy's or PgBouncer's in transaction mode), and no tenant means no rows.

- Sessions, transactions and `engine.begin()`/`engine.connect()`: every transaction that
  begins with a tenant in context runs `set_config` first (`install`).
- The read lane (single reads outside a transaction): the read carries the setting in the
  same statement (`scoped_read`), so it costs no extra round trip.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pgstack.errors import TenantScopeError
from pgstack.orm.context import audit_context, current_tenant, tenant_context

if TYPE_CHECKING:
    from pgstack.db.database import Database

T = TypeVar("T")

SETTING = "pgstack.tenant_id"
#: The tenant as policies read it: NULL when none is set in this transaction.
CURRENT_TENANT_SQL = f"NULLIF(current_setting('{SETTING}', true), '')::uuid"
SET_SQL = f"SELECT set_config('{SETTING}', $1, true)"
#: Who acts and from where (JSON), for the audit triggers: set with the tenant.
AUDIT_SETTING = "pgstack.audit_context"
SET_BOTH_SQL = f"SELECT set_config('{SETTING}', $1, true), set_config('{AUDIT_SETTING}', $2, true)"

# Every table with a tenant_id column: RLS enabled, forced, how many policies (tests, doctor).
#: The start of a table comment saying the table is a tenant directory, on purpose without
#: row-level security (pgstack.tenancy's memberships: a tenant is resolved from them).
DIRECTORY_MARK = "pgstack tenant directory:"

CATALOG_SQL = f"""
SELECT c.relname AS table_name,
       c.relrowsecurity AS enabled,
       c.relforcerowsecurity AS forced,
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
  AND coalesce(obj_description(c.oid, 'pg_class'), '') NOT LIKE '{DIRECTORY_MARK}%'
ORDER BY c.relname
"""


# Whether row-level security holds the current role, and whether pgstack's tenants exist.
_SCOPE_SQL = text(
    "SELECT NOT (r.rolsuper OR r.rolbypassrls) AND to_regclass('tenants') IS NOT NULL "
    "FROM pg_roles r WHERE r.rolname = current_user"
)


async def maintenance_scopes(db: Database) -> list[uuid.UUID | None]:
    """The tenants work over every row must visit in turn, RLS holding: None for "as it is".

    Inside a tenant, or as a role that bypasses row-level security, one pass sees every row
    it may: `[None]`. Otherwise (the application role, the owner: RLS is forced) the rows
    of no tenant first, then each tenant of the `tenants` table.
    """
    if current_tenant() is not None:
        return [None]
    async with db.engine.connect() as conn:
        if not (await conn.execute(_SCOPE_SQL)).scalar():
            return [None]
        ids = (await conn.execute(text("SELECT id FROM tenants ORDER BY id"))).scalars()
        return [None, *ids]


_TENANT_IDS = text("SELECT id FROM tenants ORDER BY id")


async def each_tenant(db: Database, work: Callable[[uuid.UUID], Awaitable[T]]) -> list[T]:
    """Run `work(tenant_id)` in the current tenant, or in every tenant in turn; its results.

    For work over rows that all belong to a tenant (a sweep, a cleanup): inside
    `tenant_context`, once, for that tenant; outside, once per row of the `tenants` table, in
    id order, each inside its `tenant_context`, so row-level security shows it that tenant's
    rows.
    """
    tenant = tenant_value()
    if tenant is not None:
        return [await work(uuid.UUID(tenant))]
    results = []
    for (scope,) in await db.run(_TENANT_IDS):
        with tenant_context(scope):
            results.append(await work(scope))
    return results


def entered(scope: uuid.UUID | None) -> AbstractContextManager[Any]:
    """`tenant_context(scope)`, or nothing for None: one of `maintenance_scopes`, entered."""
    return nullcontext() if scope is None else tenant_context(scope)


def tenant_value() -> str | None:
    """The current tenant as the setting holds it (text), or None outside `tenant_context`.

    A tenant that is not a UUID (what `tenant_id` columns and policies hold) is a
    TenantScopeError here, before any statement, rather than a database error later.
    """
    tenant = current_tenant()
    if tenant is None:
        return None
    if isinstance(tenant, uuid.UUID):
        return str(tenant)
    try:
        return str(uuid.UUID(str(tenant)))
    except ValueError:
        raise TenantScopeError(
            "The tenant in context is not a UUID: pass the tenant's id to tenant_context()."
        ) from None


def install(engine: AsyncEngine) -> None:
    """Set the tenant in context at the start of every transaction on `engine`'s connections."""
    event.listen(engine.sync_engine, "begin", _on_begin)


def _on_begin(conn: Any) -> None:
    tenant = tenant_value()
    context = audit_context()
    # A request id alone does not cost a statement: the context goes in with a tenant (the
    # same statement) or an actor; unauthenticated work is audited as "system".
    if tenant is None and "actor_id" not in context:
        return
    # Through the DBAPI cursor, not `conn.execute` (the transaction is not begun yet at this
    # point, so that would begin another): the driver opens the transaction, then sets it.
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        if context:
            cursor.execute(SET_BOTH_SQL, (tenant or "", json.dumps(context)))
        else:
            cursor.execute(SET_SQL, (tenant,))
    finally:
        cursor.close()


def scoped_read(sql: str, args: Sequence[Any]) -> tuple[str, Sequence[Any], str | None]:
    """A single statement that sets the current tenant itself, for use outside a transaction.

    A read becomes a subquery under a one-time filter that calls `set_config`: PostgreSQL
    evaluates such a filter (it references no row) before the first row is read, so the
    policies of the tables read see the tenant. A write (`INSERT/UPDATE ... RETURNING`, a
    rate-limit hit) cannot be a subquery: it comes back unchanged with the tenant as the
    third value, and the caller runs it in a transaction that sets the tenant first. Without
    a tenant, the statement is unchanged and the third value is None.
    """
    tenant = tenant_value()
    if tenant is None:
        return sql, args, None
    from pgstack.db.replicas import is_write_sql

    if is_write_sql(sql):
        return sql, args, tenant
    at = len(args) + 1
    wrapped = (
        f"SELECT * FROM ({sql}) AS pgstack_read "
        f"WHERE (SELECT set_config('{SETTING}', ${at}::text, true)) IS NOT NULL"
    )
    return wrapped, (*args, tenant), None
