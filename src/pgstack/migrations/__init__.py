"""Migrations: pgstack's built-in revisions, an application's on top, and the verbs to run them.

    from pgstack.migrations import MigrationProject, upgrade

    project = MigrationProject.discover()      # [tool.pgstack] of the nearest pyproject.toml
    upgrade("postgresql://app@db/app", "heads", project=project)

The same functions back `pgstack db ...` and the readiness check "migrations".
"""

from pgstack.migrations.api import (
    MigrationRun,
    RevisionInfo,
    check,
    current,
    downgrade,
    downgrade_async,
    downgrade_plan,
    heads,
    history,
    is_at_head,
    merge,
    revision,
    run_downgrade,
    run_upgrade,
    status,
    status_async,
    upgrade,
    upgrade_async,
)
from pgstack.migrations.health import migrations_check
from pgstack.migrations.ops import ValidationReport, clear, reset, validate
from pgstack.migrations.project import (
    PGSTACK_BRANCH,
    MigrationProject,
    pgstack_metadata,
)
from pgstack.migrations.seed import SeedContext, run_seeders, seeder
from pgstack.migrations.state import MigrationStatus

__all__ = [
    "PGSTACK_BRANCH",
    "MigrationProject",
    "MigrationRun",
    "MigrationStatus",
    "RevisionInfo",
    "SeedContext",
    "ValidationReport",
    "check",
    "clear",
    "current",
    "downgrade",
    "downgrade_async",
    "downgrade_plan",
    "heads",
    "history",
    "is_at_head",
    "merge",
    "migrations_check",
    "pgstack_metadata",
    "reset",
    "revision",
    "run_downgrade",
    "run_seeders",
    "run_upgrade",
    "seeder",
    "status",
    "status_async",
    "upgrade",
    "upgrade_async",
    "validate",
]
