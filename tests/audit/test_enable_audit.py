"""`enable_audit` in an application's migration that runs before pgstack's audit functions."""

from __future__ import annotations

import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import URL

from pgstack.audit import enable_audit
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import InvalidInputError
from pgstack.migrations import MigrationProject, upgrade


def test_enable_audit_before_pgstacks_audit_revision_says_which_to_depend_on(
    pgstack_empty_url: URL,
) -> None:
    # proves: A3, D2 (the error names the revision to depend on, and nothing is made)
    upgrade(
        pgstack_empty_url, "pgstack_0008_conversations", project=MigrationProject.pgstack_only()
    )
    engine = create_engine(
        asyncpg_dsn(pgstack_empty_url).replace("postgresql://", "postgresql+psycopg://", 1)
    )
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE invoices (id uuid PRIMARY KEY)")
            op = Operations(MigrationContext.configure(conn))
            with pytest.raises(InvalidInputError) as refused:
                enable_audit(op, "invoices")
            assert 'depends_on = "pgstack_0009_audit_speed"' in refused.value.message
            triggers = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'invoices'::regclass"
            ).scalar()
            assert triggers == 0
    finally:
        engine.dispose()
