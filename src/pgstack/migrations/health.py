"""The readiness check "migrations": the database is at the head of every branch.

A revision the code has and the database lacks is a `fail`: the code would query columns
and tables that are not there, so the instance must not take traffic. A revision the
database has and the code does not know is a `warn`: a newer release migrated first, which
is the normal middle of a rolling deploy, and the older instances keep serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgstack.db.health import Check
from pgstack.migrations.api import status_async
from pgstack.migrations.project import MigrationProject
from pgstack.migrations.state import describe_revisions

if TYPE_CHECKING:
    from pgstack.db.database import Database

CHECK_NAME = "migrations"


class MigrationsCheck:
    """A `Database.health_checks` entry that compares the version table with the scripts."""

    check_name = CHECK_NAME
    __name__ = CHECK_NAME

    def __init__(self, project: MigrationProject) -> None:
        self.project = project

    async def __call__(self, db: Database) -> Check:
        state = await status_async(db.engine, project=self.project)
        script = self.project.script
        observed = ", ".join(state.current) or "none"
        if not state.versioned or state.missing:
            return Check(
                "fail",
                observed,
                component_type="datastore",
                output=f"missing revision(s): {describe_revisions(script, state.missing)}; "
                "run `pgstack db upgrade`",
            )
        if state.unknown:
            return Check(
                "warn",
                observed,
                output=f"the database has revision(s) this code does not know: "
                f"{', '.join(state.unknown)} (a newer release migrated it)",
            )
        return Check("pass", observed, output="at head")


def migrations_check(project: MigrationProject | None = None) -> MigrationsCheck:
    """The readiness check for `project` (default: the nearest pyproject.toml's)."""
    return MigrationsCheck(project or MigrationProject.discover())


def install(db: Database, project: MigrationProject) -> MigrationsCheck:
    """Add the check to `db.health_checks` once (replacing an earlier one)."""
    db.health_checks[:] = [
        fn for fn in db.health_checks if getattr(fn, "check_name", None) != CHECK_NAME
    ]
    check = MigrationsCheck(project)
    db.health_checks.append(check)
    return check
