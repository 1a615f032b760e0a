"""The production shape for row-level security tests: roles, the application, its tenants.

`rls_app` is the application of docs/tenancy-rls.md on top of pgstack's migrations: one
tenant-scoped table, `meetings`, protected by `enable_tenant_rls` in its own migration. Two
tenants are in `tenants`. Tests connect as the application role (`RlsApp.app`), which owns
nothing and has no BYPASSRLS, exactly as a deployed service does.
"""

from __future__ import annotations

import re
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
name = "myapp"
version = "0.1.0"

[tool.pgstack]
migrations = "migrations"
branch = "myapp"
"""

DOC = Path(__file__).resolve().parents[2] / "docs" / "tenancy-rls.md"
# The application's migration is the one docs/tenancy-rls.md shows.
MIGRATION = "migrations/versions/myapp_0001_meetings.py"


def doc_block(label: str) -> str:
    """The body of the block of docs/tenancy-rls.md whose first line is `# label`."""
    for body in re.findall(r"```\w+\n(.*?)```", DOC.read_text(), flags=re.S):
        if body.startswith(f"# {label}\n"):
            return str(body)
    raise AssertionError(f"docs/tenancy-rls.md has no block labelled {label!r}")


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
    (folder / "migrations" / "versions").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT)
    (folder / MIGRATION).write_text(doc_block(MIGRATION))
    return MigrationProject.from_pyproject(folder)


def cli(*args: str, env: dict[str, str | None]) -> Any:
    """`pgstack ARGS` in this process, on a thread of its own (it runs its own loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.invoke, cli_app, list(args), env=env).result()
