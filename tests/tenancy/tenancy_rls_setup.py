"""The production shape for row-level security tests: roles, the application, its tenants.

`rls_app` is a small application on top of pgstack's migrations: one tenant-scoped table,
`meetings`, protected by `enable_tenant_rls` in its own migration. Two tenants are in
`tenants`. Tests connect as the application role (`RlsApp.app`), which owns nothing and
has no BYPASSRLS, exactly as a deployed service does.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app as cli_app
from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.migrations import MigrationProject

ACME = uuid.UUID("0190f3a0-0000-7000-8000-0000000000a1")
GLOBEX = uuid.UUID("0190f3a0-0000-7000-8000-0000000000b2")

_PYPROJECT = """\
[project]
name = "rlsapp"
version = "0.1.0"

[tool.pgstack]
migrations = "migrations"
branch = "rlsapp"
"""

_REVISION = '''"""meetings, one tenant's rows each

Revision ID: rlsapp_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from pgstack.tenancy import disable_tenant_rls, enable_tenant_rls

revision = "rlsapp_0001"
down_revision = None
branch_labels = ("rlsapp",)
depends_on = ("pgstack_0005_tenant_rls",)


def upgrade() -> None:
    op.create_table(
        "meetings",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("title", sa.Text(), nullable=False),
    )
    op.create_index("ix_meetings_tenant_id_id", "meetings", ["tenant_id", "id"])
    enable_tenant_rls(op, "meetings")


def downgrade() -> None:
    disable_tenant_rls(op, "meetings")
    op.drop_table("meetings")
'''

runner = CliRunner()


def raw(url: URL) -> str:
    return asyncpg_dsn(url)


@dataclass(frozen=True)
class RlsApp:
    """The roles' URLs and the application's project."""

    admin: URL
    owner: URL
    app: URL
    project: MigrationProject

    def settings(self, **extra: Any) -> Settings:
        """Settings of the service: the application role, the owner for migrations."""
        values: dict[str, Any] = {
            "database_url": raw(self.app),
            "database_migration_url": raw(self.owner),
            "database_pool_size": 4,
            "database_max_overflow": 0,
            "environment": "test",
            **extra,
        }
        return Settings(**values, _env_file=None)  # type: ignore[call-arg]


def write_project(folder: Path) -> MigrationProject:
    """The application's folder: pyproject.toml and its one migration."""
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT)
    (versions / "rlsapp_0001.py").write_text(_REVISION)
    return MigrationProject.from_pyproject(folder)


def cli(*args: str, env: dict[str, str | None]) -> Any:
    """`pgstack ARGS` in this process, on a thread of its own (it runs its own loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.invoke, cli_app, list(args), env=env).result()
