"""The verbs: upgrade, downgrade, current, history, revision, check, status.

Every function takes the database as `Settings`, a URL or a URL string (default: the
environment) and the migrations as a `MigrationProject` (default: the nearest
`pyproject.toml`'s `[tool.pgstack]`, else pgstack's own). They are synchronous and safe to
call from inside a running event loop, where they run on a worker thread; in async code
prefer the `*_async` forms, which do not block the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.operations.ops import MigrationScript
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError, to_tuple
from sqlalchemy import Connection, MetaData
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgstack.config import Settings, to_asyncpg_url
from pgstack.errors import ConfigurationError, MigrationError
from pgstack.migrations._engine import as_pgstack_error, migration_engine
from pgstack.migrations.compare import differences
from pgstack.migrations.project import PGSTACK_BRANCH, PGSTACK_VERSIONS, MigrationProject
from pgstack.migrations.state import (
    MigrationStatus,
    ancestry,
    dependency_downgrade,
    read_status,
)
from pgstack.migrations.state import describe_revisions as describe_revisions  # used from here

T = TypeVar("T")
Target = Settings | URL | str


# -- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevisionInfo:
    """One revision of the scripts, for `history`."""

    revision: str
    branches: tuple[str, ...]
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...]
    message: str
    path: Path
    is_head: bool
    applied: bool | None


def branch_heads(script: ScriptDirectory) -> dict[str, list[str]]:
    """Heads of each branch label; a branch with more than one needs a merge."""
    result: dict[str, list[str]] = {}
    for head in script.get_heads():
        node = script.get_revision(head)
        labels = sorted(node.branch_labels) if node is not None else []
        for label in labels or ["(unlabelled)"]:
            result.setdefault(label, []).append(head)
    return result


def multiple_heads(script: ScriptDirectory) -> list[str]:
    """One line for each branch that has more than one head."""
    return [
        f"branch {label} has {len(heads)} heads ({', '.join(sorted(heads))}): merge them with "
        f"`pgstack db merge --branch {label}`"
        for label, heads in sorted(branch_heads(script).items())
        if len(heads) > 1
    ]


def ensure_single_heads(project: MigrationProject) -> None:
    """Refuse to migrate when a branch has two heads: their order would be a guess."""
    problems = multiple_heads(project.script)
    if problems:
        raise MigrationError("; ".join(problems) + ".")


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationRun:
    """What an upgrade or a downgrade did."""

    applied: list[str]
    """Revisions upgraded (or downgraded), in the order they ran."""
    current: tuple[str, ...]
    """Revisions the database is at afterwards."""
    ahead: tuple[str, ...] = ()
    """Revisions of newer code the database is at, when an upgrade had nothing to do."""


def upgrade(
    target: Target | None = None,
    revision: str = "heads",
    *,
    project: MigrationProject | None = None,
) -> list[str]:
    """Upgrade to `revision` (default: every head) under the migration lock; the applied ids.

    A database that newer code migrated past these scripts (a rolling deploy) is left as
    it is: nothing is applied. One on another lineage is a `MigrationError`.
    """
    return run_upgrade(target, revision, project=project).applied


def run_upgrade(
    target: Target | None = None,
    revision: str = "heads",
    *,
    project: MigrationProject | None = None,
) -> MigrationRun:
    """`upgrade`, saying also where the database ends and whether it was ahead."""
    project = project or MigrationProject.discover()
    settings = migration_settings(resolve(target))
    ensure_single_heads(project)
    ahead: list[str] = []

    def guard(state: MigrationStatus) -> bool:
        if not state.unknown:
            return False
        if state.missing:
            raise MigrationError(
                f"The database is at revision(s) these scripts do not know "
                f"({', '.join(state.unknown)}) and lacks some they have "
                f"({', '.join(state.missing)}): it was migrated from another lineage. Run "
                "from the app's folder (or pass --project), or deploy the release that wrote "
                "those revisions."
            )
        ahead.extend(state.unknown)
        return True  # newer code migrated it: nothing to do, and nothing to undo

    return _run(command.upgrade, settings, project, revision, guard, "upgrading", ahead)


def downgrade(
    target: Target | None,
    revision: str,
    *,
    project: MigrationProject | None = None,
) -> list[str]:
    """Downgrade to `revision` (`base`, `-1`, `app@-1`, an id) under the lock; the undone ids."""
    return run_downgrade(target, revision, project=project).applied


def run_downgrade(
    target: Target | None,
    revision: str,
    *,
    project: MigrationProject | None = None,
) -> MigrationRun:
    """`downgrade`, saying also where the database ends; one connection does it all."""
    project = project or MigrationProject.discover()
    settings = migration_settings(resolve(target))

    def guard(state: MigrationStatus) -> bool:
        _refuse_unknown(state, "downgrade")
        _refuse_ambiguous_step(revision, state.current)
        return False

    return _run(command.downgrade, settings, project, revision, guard, "downgrading", [])


def _run(
    verb: Callable[[Any, str], Any],
    settings: Settings,
    project: MigrationProject,
    revision: str,
    guard: Callable[[MigrationStatus], bool],
    doing: str,
    ahead: list[str],
) -> MigrationRun:
    config = project.alembic_config(
        **{"pgstack.settings": settings, "pgstack.lock": True, "pgstack.guard": guard}
    )

    def run() -> MigrationRun:
        verb(config, revision)
        return MigrationRun(
            applied=list(config.attributes.get("pgstack.applied", [])),
            current=tuple(config.attributes.get("pgstack.current", ())),
            ahead=tuple(ahead),
        )

    return _guarded(run, settings, doing)


def downgrade_plan(
    target: Target | None, revision: str, *, project: MigrationProject | None = None
) -> list[str]:
    """The revisions a downgrade to `revision` would undo, newest first (nothing is changed)."""
    project = project or MigrationProject.discover()
    settings = migration_settings(resolve(target))
    state = status(settings, project=project)
    _refuse_unknown(state, "downgrade")
    _refuse_ambiguous_step(revision, state.current)

    def plan() -> list[str]:
        script = project.script
        try:
            steps = list(
                script.iterate_revisions(
                    state.current or "base", revision, select_for_downgrade=True
                )
            )
        except RevisionError:
            steps = dependency_downgrade(script, state.current, revision)
            if not steps:
                raise
        return [s.revision for s in steps]

    return _guarded(plan, settings, "planning the downgrade")


def _refuse_unknown(state: MigrationStatus, what: str) -> None:
    if state.unknown:
        raise MigrationError(
            f"The database is at revision(s) these scripts do not know "
            f"({', '.join(state.unknown)}), so this code cannot {what} it. Run from the app's "
            "folder (or pass --project), or use the release that wrote those revisions."
        )


def _refuse_ambiguous_step(revision: str, current_revs: Sequence[str]) -> None:
    # "-1" with several heads applied (the app's and pgstack's) has no single meaning:
    # say so rather than let the migration tool pick one.
    if revision.startswith("-") and len(current_revs) > 1:
        raise MigrationError(
            f"The database is at several heads ({', '.join(current_revs)}), so {revision!r} "
            "is ambiguous. Name the revision to go back to (see `pgstack db history`), or "
            "`base`."
        )


def current(
    target: Target | None = None, *, project: MigrationProject | None = None
) -> tuple[str, ...]:
    """The revisions the database is at (empty when none is applied)."""
    return status(target, project=project).current


def status(
    target: Target | None = None, *, project: MigrationProject | None = None
) -> MigrationStatus:
    """Where the database stands: current, heads, missing and unknown revisions."""
    project = project or MigrationProject.discover()
    settings = migration_settings(resolve(target))
    script = project.script
    return _with_connection(
        settings, lambda conn: read_status(conn, script), "reading the migration state"
    )


def is_at_head(target: Target | None = None, *, project: MigrationProject | None = None) -> bool:
    """Whether every revision of pgstack and the app is applied (and none unknown)."""
    return status(target, project=project).at_head


def heads(project: MigrationProject | None = None) -> list[str]:
    """The head revisions of the scripts."""
    project = project or MigrationProject.discover()
    return list(project.script.get_heads())


def history(
    target: Target | None = None, *, project: MigrationProject | None = None
) -> list[RevisionInfo]:
    """Every revision, newest first; `applied` is filled in when a database is given."""
    project = project or MigrationProject.discover()
    script = project.script
    missing: set[str] | None = None
    if target is not None:
        missing = set(status(target, project=project).missing)
    head_set = set(script.get_heads())
    result = []
    for node in script.walk_revisions():
        result.append(
            RevisionInfo(
                revision=node.revision,
                branches=tuple(sorted(node.branch_labels)),
                down_revisions=tuple(to_tuple(node.down_revision, default=())),
                depends_on=tuple(node._resolved_dependencies),
                message=(node.doc or "").strip(),
                path=Path(node.path),
                is_head=node.revision in head_set,
                applied=None if missing is None else node.revision not in missing,
            )
        )
    return result


_REV_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


def revision(
    message: str,
    *,
    autogenerate: bool = False,
    target: Target | None = None,
    branch: str | None = None,
    project: MigrationProject | None = None,
    rev_id: str | None = None,
    metadata: Sequence[MetaData] | None = None,
) -> Path:
    """Write a new revision file on the app's branch (or `branch="pgstack"`); its path.

    An app's first revision starts its branch and depends on pgstack's head; a later one
    depends on pgstack's head too when pgstack gained revisions since. `autogenerate`
    compares the models (`metadata`, default: pgstack's and the project's) with the
    database, which must be at head, and writes the operations.
    """
    if rev_id is not None and not _REV_ID.fullmatch(rev_id):
        # The id becomes the file's name: "../x" would write outside the versions folder.
        raise ConfigurationError(
            f"Revision id {rev_id[:40]!r} is not usable: use 1-64 letters, digits and "
            "underscores (or leave it out for a generated one)."
        )
    if not message.strip():
        raise ConfigurationError("A revision needs a message: say what it does with -m.")
    if branch is not None and not branch.strip():
        raise ConfigurationError(
            "The branch label is empty: name one, or leave it out for the app's."
        )
    project = project or MigrationProject.discover()
    script = project.script
    label = branch or (project.branch if project.versions is not None else PGSTACK_BRANCH)
    kwargs: dict[str, Any] = {"message": message, "rev_id": rev_id}
    if label == PGSTACK_BRANCH:
        kwargs.update(head=f"{PGSTACK_BRANCH}@head", version_path=str(PGSTACK_VERSIONS))
    else:
        if project.versions is None:
            raise ConfigurationError(
                'This project has no migrations folder: set `migrations = "migrations"` in '
                "[tool.pgstack] of pyproject.toml (or pass --migrations)."
            )
        kwargs["version_path"] = str(project.versions)
        own = branch_heads(script).get(label, [])
        if len(own) > 1:
            raise MigrationError("; ".join(multiple_heads(script)) + ".")
        pgstack_head = branch_heads(script)[PGSTACK_BRANCH]
        if own:
            kwargs["head"] = f"{label}@head"
            if not set(pgstack_head) <= ancestry(script, own):
                kwargs["depends_on"] = pgstack_head
        else:
            kwargs.update(head="base", branch_label=label, depends_on=pgstack_head)

    attributes: dict[str, Any] = {}
    settings: Settings | None = None
    if autogenerate:
        settings = migration_settings(resolve(target))
        ensure_single_heads(project)
        models = list(metadata) if metadata is not None else project.metadata()
        attributes = {"pgstack.settings": settings, "pgstack.metadata": models}
    config = project.alembic_config(**attributes)

    def refuse_empty(context: Any, revision: Any, directives: list[MigrationScript]) -> None:
        ops = directives[0].upgrade_ops if autogenerate and directives else None
        if ops is not None and ops.is_empty():
            raise MigrationError(
                "The models and the database agree: no revision written. Change a model "
                "first, or drop --autogenerate for a hand-written revision."
            )

    def run() -> Path:
        script_obj = command.revision(
            config,
            autogenerate=autogenerate,
            process_revision_directives=refuse_empty,
            **kwargs,
        )
        project.forget_scripts()  # the new file is one of them now
        if not isinstance(script_obj, Script):
            raise MigrationError("Alembic wrote no revision file.")
        return Path(script_obj.path)

    return _guarded(run, settings, "writing the revision")


def merge(
    message: str,
    *,
    branch: str | None = None,
    project: MigrationProject | None = None,
) -> Path:
    """Write a revision that merges the heads of one branch (default: the app's) into one."""
    project = project or MigrationProject.discover()
    label = branch or (project.branch if project.versions is not None else PGSTACK_BRANCH)
    own = branch_heads(project.script).get(label, [])
    if len(own) < 2:
        raise MigrationError(
            f"Branch {label} has {len(own)} head(s): nothing to merge. `pgstack db check` "
            "names a branch with several heads; pass it with --branch."
        )
    config = project.alembic_config()

    def run() -> Path:
        # Alembic writes a merge beside the heads it merges, so it lands on their branch.
        script_obj = command.merge(config, own, message=message)
        project.forget_scripts()
        if script_obj is None:
            raise MigrationError("Alembic wrote no merge revision.")
        return Path(script_obj.path)

    return _guarded(run, None, "merging")


def check(
    target: Target | None = None,
    *,
    project: MigrationProject | None = None,
    metadata: Sequence[MetaData] | None = None,
) -> list[str]:
    """What keeps models, migrations and the database from agreeing; empty when they do.

    Lists branches with several heads (and then nothing else), or revisions not applied
    yet, or (once the database is at head) every difference between the models and the
    schema.
    """
    project = project or MigrationProject.discover()
    settings = migration_settings(resolve(target))
    script = project.script
    problems = multiple_heads(script)
    if problems:
        return problems  # nothing can be upgraded, so comparing the database says nothing
    models = list(metadata) if metadata is not None else project.metadata()

    def inspect_db(conn: Connection) -> list[str]:
        state = read_status(conn, script)
        found: list[str] = []
        if state.missing:
            found.append(
                f"not applied: {describe_revisions(script, state.missing)} "
                "(run `pgstack db upgrade`, then check again)"
            )
        if state.unknown:
            found.append(
                f"the database has revisions these scripts do not know: {', '.join(state.unknown)}"
            )
        if not found:
            found.extend(differences(conn, models))
        return found

    return _with_connection(settings, inspect_db, "comparing the models")


# -- async forms ---------------------------------------------------------------------------


async def upgrade_async(
    target: Target | None = None,
    revision: str = "heads",
    *,
    project: MigrationProject | None = None,
) -> list[str]:
    """`upgrade` on a worker thread, for event-loop code such as an application's lifespan."""
    return await asyncio.to_thread(upgrade, target, revision, project=project)


async def downgrade_async(
    target: Target | None, revision: str, *, project: MigrationProject | None = None
) -> list[str]:
    """`downgrade` on a worker thread."""
    return await asyncio.to_thread(downgrade, target, revision, project=project)


async def status_async(
    engine: AsyncEngine | AsyncConnection, *, project: MigrationProject | None = None
) -> MigrationStatus:
    """Where the database of an open engine (or connection) stands; no new connection."""
    project = project or MigrationProject.discover()
    script = project.script
    if isinstance(engine, AsyncConnection):
        return await engine.run_sync(read_status, script)
    async with engine.connect() as conn:
        return await conn.run_sync(read_status, script)


# -- plumbing ------------------------------------------------------------------------------


def resolve(target: Target | None) -> Settings:
    """Settings for `target`; the environment supplies everything it does not say.

    A URL given is the database for every purpose: DATABASE_MIGRATION_URL does not apply.
    """
    if isinstance(target, Settings):
        settings = target
    elif target is None:
        settings = Settings()
    else:
        url = to_asyncpg_url(target) if isinstance(target, str) else target
        settings = Settings().with_url(url).model_copy(update={"database_migration_url": None})
    if settings.url is None:
        raise ConfigurationError(
            "No database is configured: set DATABASE_URL (or DATABASE_HOST/NAME/USER/PASSWORD)."
        )
    return settings


def migration_settings(settings: Settings) -> Settings:
    """The settings migrations run with: DATABASE_MIGRATION_URL (the owner's) when it is set."""
    owner = settings.database_migration_url
    if owner is None:
        return settings
    to_asyncpg_url(owner.get_secret_value(), "DATABASE_MIGRATION_URL")  # fail early, by name
    return settings.model_copy(update={"database_url": owner})


def run_off_loop(fn: Callable[[], T]) -> T:
    """Run `fn` here, or on a worker thread when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgstack-migrate") as pool:
        return pool.submit(fn).result()


def _guarded(fn: Callable[[], T], settings: Settings | None, doing: str) -> T:
    url = settings.url if settings is not None else None
    try:
        return run_off_loop(fn)
    except CommandError as exc:
        raise MigrationError(
            f"{doing[:1].upper()}{doing[1:]} failed: {str(exc).rstrip('.')}. {command_hint(exc)}"
        ) from None
    except Exception as exc:
        raise as_pgstack_error(exc, url, doing) from None


def command_hint(exc: CommandError) -> str:
    """What to do about one of Alembic's command errors."""
    text = str(exc).lower()
    if "can't locate revision" in text:
        return (
            "The database or the command names a revision these scripts lack: run from the "
            "app's folder (or pass --project), or deploy the release that wrote it."
        )
    if "multiple head" in text:
        return (
            "Name one head as BRANCH@head, or merge them: `pgstack db merge --branch BRANCH` "
            "(branches: `pgstack db history`)."
        )
    return "`pgstack db history` lists the revisions and branches."


def _with_connection(settings: Settings, fn: Callable[[Connection], T], doing: str) -> T:
    async def go() -> T:
        assert settings.url is not None
        engine = migration_engine(settings, settings.url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return _guarded(lambda: asyncio.run(go()), settings, doing)
