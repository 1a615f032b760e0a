"""Row-level security for tenant-scoped tables: the helper a migration calls, and its check.

An application's Alembic migration protects its own tenant-scoped table with one call, and
undoes it in the downgrade:

    from pgstack.tenancy import disable_tenant_rls, enable_tenant_rls

    def upgrade() -> None:
        op.create_table("meetings", ..., sa.Column("tenant_id", sa.Uuid(), nullable=False))
        enable_tenant_rls(op, "meetings")

    def downgrade() -> None:
        disable_tenant_rls(op, "meetings")
        op.drop_table("meetings")

The table then shows and accepts only the rows of the tenant set in the transaction
(`pgstack.db.tenant`), for every role but superusers and roles with BYPASSRLS: RLS is
FORCEd, so the owner that runs the migrations is held to it too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from pgstack.db.tenant import CURRENT_TENANT_SQL
from pgstack.errors import InvalidInputError

#: The name of the policy `enable_tenant_rls` creates on each table.
POLICY = "pgstack_tenant_isolation"

# Wrapped in a sub-select so PostgreSQL reads the setting once per statement, not per row.
_TENANT = f"(SELECT {CURRENT_TENANT_SQL})"

#: Tables whose rows need no tenant: a row without one is visible only when no tenant is set.
NULLABLE_CHECK = f"tenant_id IS NOT DISTINCT FROM {_TENANT}"
STRICT_CHECK = f"tenant_id = {_TENANT}"


def _quoted(op: Any, table: str, schema: str | None) -> str:
    if not table or "\x00" in table:
        raise InvalidInputError("enable_tenant_rls needs the name of an existing table.")
    preparer = op.get_bind().dialect.identifier_preparer
    name = preparer.quote(table)
    return f"{preparer.quote_schema(schema)}.{name}" if schema else name


def enable_tenant_rls(
    op: Any,
    table: str,
    *,
    schema: str | None = None,
    allow_without_tenant: bool = False,
) -> None:
    """Enable and force row-level security on `table`, with a policy on its `tenant_id`.

    Rows are visible, and may be written, only where `tenant_id` equals the tenant set in the
    transaction; with none set, no row is visible and every insert fails. With
    `allow_without_tenant`, rows whose `tenant_id` is NULL are the "no tenant" rows: visible
    and writable only while no tenant is set. Run it in the migration that creates the table
    (as the owner role); `disable_tenant_rls` undoes it.
    """
    name = _quoted(op, table, schema)
    policy = op.get_bind().dialect.identifier_preparer.quote(POLICY)
    check = NULLABLE_CHECK if allow_without_tenant else STRICT_CHECK
    op.execute(text(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"))
    op.execute(text(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY"))
    op.execute(text(f"DROP POLICY IF EXISTS {policy} ON {name}"))
    op.execute(text(f"CREATE POLICY {policy} ON {name} USING ({check}) WITH CHECK ({check})"))


def disable_tenant_rls(op: Any, table: str, *, schema: str | None = None) -> None:
    """Undo `enable_tenant_rls`: drop the policy, stop forcing and disable row-level security."""
    name = _quoted(op, table, schema)
    policy = op.get_bind().dialect.identifier_preparer.quote(POLICY)
    op.execute(text(f"DROP POLICY IF EXISTS {policy} ON {name}"))
    op.execute(text(f"ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY"))
    op.execute(text(f"ALTER TABLE {name} DISABLE ROW LEVEL SECURITY"))
