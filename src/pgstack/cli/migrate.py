"""`pgstack db upgrade|downgrade|current|history|revision|merge|check|reset|clear|validate|seed`.

The app's migrations, models and seeds come from `[tool.pgstack]` in the nearest
`pyproject.toml`, or from the options. With no database configured, the commands use the
embedded server in PGSTACK_DATA_DIR, as `pgstack serve` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgstack.cli.main import JsonOpt, db_app, expected_failures, once
from pgstack.errors import MigrationError

if TYPE_CHECKING:
    from rich.progress import Progress

    from pgstack.config import Settings
    from pgstack.db.database import Database
    from pgstack.migrations.project import MigrationProject

# The commands import Alembic, SQLAlchemy and rich when they run, not when `--help` is asked.

ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        help="Folder of the app's pyproject.toml with [tool.pgstack] (default: nearest above).",
    ),
]
MigrationsOpt = Annotated[
    Path | None,
    typer.Option("--migrations", help="Folder of the app's revisions (overrides pyproject)."),
]
ModelsOpt = Annotated[
    str | None,
    typer.Option("--models", help="Module (or module:attribute) of the app's models."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def load_project(
    project: Path | None = None,
    migrations: Path | None = None,
    models: str | None = None,
    seeds: list[str] | None = None,
) -> MigrationProject:
    """The project from pyproject.toml, with the options' values on top."""
    from pgstack.migrations.project import MigrationProject

    found = (
        MigrationProject.from_pyproject(project)
        if project is not None
        else MigrationProject.discover()
    )
    if migrations is not None:
        versions = MigrationProject.build(migrations=migrations).versions
        found = dataclasses.replace(found, versions=versions, configured=True)
    if models is not None:
        found = dataclasses.replace(found, models=models, configured=True)
    if seeds:
        found = dataclasses.replace(found, seeds=tuple(seeds), configured=True)
    return found


@contextmanager
def database_settings() -> Iterator[Settings]:
    """Settings with a database URL: the configured one, or the embedded server's."""
    from pgstack.config import Settings

    settings = Settings()
    if settings.is_configured:
        yield settings
        return
    from pgstack.db.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.data_dir / "pgdata")
    url = embedded.start()
    typer.echo(f"pgstack: embedded PostgreSQL with its data in {embedded.data_dir}", err=True)
    try:
        yield settings.with_url(url)
    finally:
        embedded.stop()


async def add_migrations_check(db: Database, project: MigrationProject | None = None) -> None:
    """Add the readiness check "migrations" when the project has migrations to check.

    That is: `[tool.pgstack]` is configured, or the database was migrated by pgstack.
    """
    from pgstack import migrations as mig
    from pgstack.migrations.health import install
    from pgstack.migrations.project import MigrationProject

    project = project or MigrationProject.discover()
    if not project.configured:
        state = await mig.status_async(db.engine, project=project)
        if not state.versioned:
            return
    install(db, project)


def _revision_line(project: MigrationProject, revisions: list[str] | tuple[str, ...]) -> str:
    from pgstack.migrations.state import describe_revisions

    return describe_revisions(project.script, revisions) or "none"


@db_app.command("upgrade")
@expected_failures
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "heads",
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
) -> None:
    """Apply migrations up to REVISION (default: the head of pgstack's and the app's)."""
    if not revision.strip():
        raise MigrationError(
            "Name the revision to upgrade to (`pgstack db history` lists them), or leave it "
            "out to apply every pending one."
        )
    proj = load_project(project, migrations)
    from pgstack import migrations as mig

    with database_settings() as settings:
        run = mig.run_upgrade(settings, revision, project=proj)
    for rev in run.applied:
        typer.echo(f"applied {_revision_line(proj, [rev])}")
    if not run.applied:
        typer.echo("nothing to apply")
    typer.echo(f"current: {', '.join(run.current) or 'none'}")
    if run.ahead:
        typer.echo(
            f"note: newer code migrated this database ({', '.join(run.ahead)}); nothing was "
            "changed. If this is not a rolling deploy, run from the app's folder (or pass "
            "--project).",
            err=True,
        )


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
@expected_failures
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target: a revision id, base, -1, BRANCH@base.")],
    yes: YesOpt = False,
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
) -> None:
    """Undo migrations down to REVISION; asks first unless --yes."""
    proj = load_project(project, migrations)
    _check_downgrade_target(proj, revision)
    from pgstack import migrations as mig

    with database_settings() as settings:
        plan = mig.downgrade_plan(settings, revision, project=proj)
        if not plan:
            typer.echo("nothing to undo")
            return
        typer.echo(f"this undoes {len(plan)} revision(s), newest first:")
        for rev in plan:
            typer.echo(f"  {_revision_line(proj, [rev])}")
        if not yes:
            typer.confirm("Undo them? What they created, data included, is dropped", abort=True)
        run = mig.run_downgrade(settings, revision, project=proj)
    for rev in run.applied:
        typer.echo(f"undone {rev}")
    typer.echo(f"current: {', '.join(run.current) or 'none'}")


# Alembic's relative target: [BRANCH@][REVISION]+N or -N.
_RELATIVE = re.compile(r"(?:(?P<branch>.+?)@)?(?P<symbol>\w+?)?(?P<step>[-+]\d+)")
_TARGETS = "-1 for one step back, a revision id (`pgstack db history` lists them), or base"


def _check_downgrade_target(project: MigrationProject, revision: str) -> None:
    """Refuse a downgrade target that is empty, points forward, or names no revision, before
    the database is touched (Alembic would answer with its exception's name)."""
    from alembic.util import CommandError

    target = revision.strip()
    shown = repr(target[:80])
    if not target:
        raise MigrationError(f"Name the revision to go back to: {_TARGETS}.")
    script = project.script

    def known(name: str) -> bool:
        try:
            script.get_revisions(name)
        except (CommandError, KeyError, ValueError, AssertionError):
            return False
        return True

    relative = _RELATIVE.fullmatch(target)
    if relative is not None:
        step = int(relative["step"])
        if step >= 0 and relative["symbol"] is None:
            where = "forward" if step else "nowhere"
            raise MigrationError(
                f"{shown} goes {where}, and a downgrade goes back: give {_TARGETS}. "
                "To apply revisions, run `pgstack db upgrade`."
            )
        named = [relative["branch"], relative["symbol"]]
    else:
        branch, _, rest = target.rpartition("@")
        named = [branch or None, None if rest == "base" else target]
    labels = {label for rev in script.walk_revisions() for label in rev.branch_labels}
    if named[0] is not None and named[0] not in labels:
        raise MigrationError(
            f"{shown} names the branch {named[0][:80]!r}, which these migrations do not have; "
            f"branches: {', '.join(sorted(labels)) or 'none'} (`pgstack db history`)."
        )
    if target.startswith("@") or (named[1] is not None and not known(named[1])):
        raise MigrationError(
            f"{shown} is not a revision these migrations know (run from the app's folder, "
            f"or pass --project, to include the app's): give {_TARGETS}."
        )


@db_app.command("current")
@expected_failures
def current(project: ProjectOpt = None, migrations: MigrationsOpt = None) -> None:
    """Show the revisions the database is at, and what is missing."""
    proj = load_project(project, migrations)
    from pgstack import migrations as mig

    with database_settings() as settings:
        state = mig.status(settings, project=proj)
    for rev in state.current:
        mark = " (head)" if rev in state.heads else ""
        typer.echo(f"{_revision_line(proj, [rev])}{mark}")
    if not state.current:
        typer.echo("no revision applied")
    if state.missing:
        typer.echo(f"missing: {', '.join(state.missing)} (run `pgstack db upgrade`)")
    if state.unknown:
        typer.echo(
            f"unknown to this code: {', '.join(state.unknown)} (newer code migrated it, or "
            "this is not the app's folder: pass --project)"
        )


@db_app.command("history")
@expected_failures
def history(
    project: ProjectOpt = None, migrations: MigrationsOpt = None, as_json: JsonOpt = False
) -> None:
    """List every revision, newest first (and which are applied, when a database is set)."""
    proj = load_project(project, migrations)
    import dataclasses
    import json

    from rich.table import Table

    from pgstack import migrations as mig
    from pgstack.cli.main import console
    from pgstack.config import Settings

    settings = Settings()
    target = settings if settings.is_configured else None
    revisions = mig.history(target, project=proj)
    if as_json:
        rows = [dataclasses.asdict(info) | {"path": str(info.path)} for info in revisions]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="migrations, newest first")
    for column in ("revision", "branch", "after", "depends on", "applied", "message"):
        table.add_column(column)
    for info in revisions:
        applied = "" if info.applied is None else ("yes" if info.applied else "no")
        head = " (head)" if info.is_head else ""
        table.add_row(
            info.revision + head,
            ", ".join(info.branches),
            ", ".join(info.down_revisions) or "base",
            ", ".join(info.depends_on),
            applied,
            info.message,
        )
    console.print(table)


@db_app.command("revision")
@expected_failures
def revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the revision does.")],
    autogenerate: Annotated[
        bool, typer.Option("--autogenerate", help="Write the operations from the models.")
    ] = False,
    branch: Annotated[
        str | None, typer.Option("--branch", help="Branch label (default: the app's).")
    ] = None,
    rev_id: Annotated[str | None, typer.Option("--rev-id", help="Revision id to use.")] = None,
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
    models: ModelsOpt = None,
) -> None:
    """Write a new revision on the app's branch (depends on pgstack's head)."""
    proj = load_project(project, migrations, models)
    from pgstack import migrations as mig

    if autogenerate:
        with database_settings() as settings:
            path = mig.revision(
                message,
                autogenerate=True,
                target=settings,
                branch=branch,
                project=proj,
                rev_id=rev_id,
            )
    else:
        path = mig.revision(message, branch=branch, project=proj, rev_id=rev_id)
    typer.echo(f"wrote {path}")


@db_app.command("merge")
@expected_failures
def merge(
    message: Annotated[
        str, typer.Option("--message", "-m", help="What the merge joins.")
    ] = "merge heads",
    branch: Annotated[
        str | None, typer.Option("--branch", help="Branch whose heads to merge.")
    ] = None,
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
) -> None:
    """Join the heads of a branch into one (after two revisions were made in parallel)."""
    proj = load_project(project, migrations)
    from pgstack import migrations as mig

    typer.echo(f"wrote {mig.merge(message, branch=branch, project=proj)}")


@db_app.command("check")
@expected_failures
def check(
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
    models: ModelsOpt = None,
    safety: Annotated[
        bool, typer.Option("--safety", help="Lint pending revisions for locks and rewrites.")
    ] = False,
) -> None:
    """Compare the models with the database; exit 1 and list the differences if they drift."""
    proj = load_project(project, migrations, models)
    if safety:
        from pgstack.cli.ops import check_safety

        return check_safety(proj)
    from pgstack import migrations as mig
    from pgstack.migrations.api import multiple_heads

    heads = multiple_heads(proj.script)
    if heads:
        typer.echo("the migrations have more than one head: merge the heads, then check again")
        for line in heads:
            typer.echo(f"  - {line}")
        raise typer.Exit(1)
    with database_settings() as settings:
        problems = mig.check(settings, project=proj)
    if not problems:
        typer.echo("models, migrations and database agree")
        return
    typer.echo(f"{len(problems)} difference(s) between the models and the database:")
    for problem in problems:
        typer.echo(f"  - {problem}")
    if all(problem.startswith("not applied:") for problem in problems):
        # Revisions that exist but have not run: writing another would copy their tables.
        typer.echo("fix: `pgstack db upgrade`, then check again")
    else:
        typer.echo("fix: `pgstack db revision --autogenerate -m '...'`, review it, then upgrade")
    raise typer.Exit(1)


@db_app.command("reset")
@expected_failures
def reset(
    yes: YesOpt = False, project: ProjectOpt = None, migrations: MigrationsOpt = None
) -> None:
    """Drop every table, view, type and function, then migrate to head (refused in production)."""
    from pgstack.config import Settings
    from pgstack.migrations.ops import refuse_in_production

    refuse_in_production(Settings(), "reset")
    proj = load_project(project, migrations)
    from pgstack import migrations as mig

    with database_settings() as settings:
        if not yes:
            typer.confirm(
                f"Drop everything in {_where(settings)} and migrate it afresh", abort=True
            )
        applied = mig.reset(settings, project=proj)
    typer.echo(f"reset; applied {', '.join(applied) or 'nothing'}")


@db_app.command("clear")
@expected_failures
def clear(
    yes: YesOpt = False,
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
    models: ModelsOpt = None,
) -> None:
    """Delete every row of the models' tables, keeping the schema (refused in production)."""
    from pgstack.config import Settings
    from pgstack.migrations.ops import refuse_in_production

    refuse_in_production(Settings(), "clear")
    proj = load_project(project, migrations, models)
    from pgstack import migrations as mig

    with database_settings() as settings:
        if not yes:
            typer.confirm(
                f"Delete every row of the models' tables in {_where(settings)}", abort=True
            )
        removed = mig.clear(settings, project=proj)
    for table, count in removed.items():
        typer.echo(f"{table}: {count} row(s) removed")
    if not removed:
        typer.echo("no table of the models exists yet")


@db_app.command("validate")
@expected_failures
def validate(
    project: ProjectOpt = None, migrations: MigrationsOpt = None, models: ModelsOpt = None
) -> None:
    """Check migrations, schema objects and data access, and summarise; exit 1 on failure."""
    proj = load_project(project, migrations, models)
    from pgstack import migrations as mig

    with database_settings() as settings:
        report = mig.validate(settings, project=proj)
    from rich.table import Table

    from pgstack.cli.main import console

    table = Table(title=f"database validation: {'pass' if report.ok else 'fail'}")
    for column in ("section", "check", "result", "detail"):
        table.add_column(column)
    for item in report.items:
        result = "[green]ok[/]" if item.ok else "[red]FAIL[/]"
        table.add_row(item.section, item.name, result, item.detail)
    console.print(table)
    # Failures again as plain lines: a narrow terminal or a CI log must not cut them short.
    for item in report.items:
        if not item.ok:
            typer.echo(f"FAIL {item.section}: {item.detail}")
    raise typer.Exit(0 if report.ok else 1)


@db_app.command("seed")
@expected_failures
def seed(
    dataset: Annotated[str, typer.Argument(help="Data set: dev, test, or another registered.")],
    seeds: Annotated[
        list[str] | None, typer.Option("--seeds", help="Module that registers seeders.")
    ] = None,
    project: ProjectOpt = None,
    migrations: MigrationsOpt = None,
) -> None:
    """Load a seed data set; running it again adds nothing (refused in production)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pgstack.cli.main import console
    from pgstack.config import Settings
    from pgstack.migrations.ops import refuse_in_production

    refuse_in_production(Settings(), "seed")
    proj = load_project(project, migrations, seeds=seeds)
    from pgstack import migrations as mig

    with database_settings() as settings:
        state = mig.status(settings, project=proj)
        if not state.at_head:
            raise MigrationError(
                f"The database is not at head (missing: {', '.join(state.missing) or 'none'}): "
                "run `pgstack db upgrade` first."
            )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
        ) as progress:
            try:
                added = asyncio.run(_seed(settings, dataset, proj, progress))
            except BaseException:
                # A failure leaves no bar behind, nor the empty line that a stopping bar
                # prints on a pipe: the error is the only line.
                progress.live.transient = True
                progress.live.stop()
                progress.disable = True
                raise
    for table, count in added.items():
        typer.echo(f"{table}: {count} row(s) added")


async def _seed(
    settings: Settings, dataset: str, project: MigrationProject, progress: Progress
) -> dict[str, int]:
    from pgstack import migrations as mig
    from pgstack.db.database import Database

    db = Database(once(settings))
    await db.connect()
    try:
        return await mig.run_seeders(db, dataset, project=project, progress=progress)
    finally:
        await db.disconnect()


def _where(settings: Settings) -> str:
    url = settings.url
    if url is None:
        return "the database"
    from pgstack.config import hosts_text

    return f"database {url.database!r} on {hosts_text(url)}"
