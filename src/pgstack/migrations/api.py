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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.migration import MigrationContext
from alembic.operations.ops import MigrationScript
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError, to_tuple
from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgstack.config import Settings, to_asyncpg_url
from pgstack.errors import ConfigurationError, MigrationError
from pgstack.migrations._engine import as_pgstack_error, migration_engine
from pgstack.migrations.compare import differences
from pgstack.migrations.project import PGSTACK_BRANCH, PGSTACK_VERSIONS, MigrationProject

T = TypeVar("T")
Target = Settings | URL | str
VERSION_TABLE = "alembic_version"


# -- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands against the migration scripts."""

    current: tuple[str, ...]
    """Revisions in the database's version table."""
    heads: tuple[str, ...]
    """Head revisions of the scripts (pgstack's branch and the app's)."""
    missing: tuple[str, ...]
    """Revisions of the scripts not applied to the database, in the order they would run."""
    unknown: tuple[str, ...]
    """Revisions in the database that the scripts do not know (applied by newer code)."""
    versioned: bool
    """Whether the database has a version table at all."""

    @property
    def at_head(self) -> bool:
        """Every revision applied, and none the scripts do not know."""
        return self.versioned and not self.missing and not self.unknown


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


def status_from(
    script: ScriptDirectory, current: Iterable[str], versioned: bool
) -> MigrationStatus:
    """Compare a database's version rows with the scripts."""
    current = tuple(current)
    known = {s.revision for s in script.walk_revisions()}
    unknown = tuple(r for r in current if r not in known)
    applied = ancestry(script, [r for r in current if r in known])
    order = [s.revision for s in reversed(list(script.walk_revisions()))]
    return MigrationStatus(
        current=current,
        heads=tuple(script.get_heads()),
        missing=tuple(r for r in order if r not in applied),
        unknown=unknown,
        versioned=versioned,
    )


def ancestry(script: ScriptDirectory, revisions: Iterable[str]) -> set[str]:
    """The revisions and everything they need: down revisions and `depends_on`, transitively."""
    seen: set[str] = set()
    todo = list(revisions)
    while todo:
        rev = todo.pop()
        if rev in seen:
            continue
        seen.add(rev)
        node = script.get_revision(rev)
        if node is not None:
            # Alembic's own normalised parents: down revisions plus resolved `depends_on`.
            todo.extend(node._normalized_down_revisions)
            todo.extend(node._resolved_dependencies)
    return seen


def describe_revisions(script: ScriptDirectory, revisions: Iterable[str]) -> str:
    """`rev (branch: message), ...` for messages."""
    parts = []
    for rev in revisions:
        node = script.get_revision(rev)
        if node is None:
            parts.append(rev)
            continue
        label = ",".join(sorted(node.branch_labels)) or "unlabelled"
        parts.append(f"{rev} ({label}: {(node.doc or '').strip()})")
    return ", ".join(parts)


def read_current(conn: Connection) -> tuple[tuple[str, ...], bool]:
    """The version rows of the database on `conn`, and whether its version table exists."""
    versioned = inspect(conn).has_table(VERSION_TABLE)
    if not versioned:
        return (), False
    return tuple(MigrationContext.configure(conn).get_current_heads()), True


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


def upgrade(
    target: Target | None = None,
    revision: str = "heads",
    *,
    project: MigrationProject | None = None,
) -> list[str]:
    """Upgrade to `revision` (default: every head) under the migration lock; the applied ids."""
    project = project or MigrationProject.discover()
    settings = resolve(target)
    ensure_single_heads(project)
    config = project.alembic_config(**{"pgstack.settings": settings, "pgstack.lock": True})

    def run() -> list[str]:
        command.upgrade(config, revision)
        return list(config.attributes.get("pgstack.applied", []))

    return _guarded(run, settings, "upgrading")


def downgrade(
    target: Target | None,
    revision: str,
    *,
    project: MigrationProject | None = None,
) -> list[str]:
    """Downgrade to `revision` (`base`, `-1`, `app@-1`, an id) under the lock; the undone ids."""
    project = project or MigrationProject.discover()
    settings = resolve(target)
    _refuse_ambiguous_step(revision, current(settings, project=project))
    config = project.alembic_config(**{"pgstack.settings": settings, "pgstack.lock": True})

    def run() -> list[str]:
        command.downgrade(config, revision)
        return list(config.attributes.get("pgstack.applied", []))

    return _guarded(run, settings, "downgrading")


def downgrade_plan(
    target: Target | None, revision: str, *, project: MigrationProject | None = None
) -> list[str]:
    """The revisions a downgrade to `revision` would undo, newest first (nothing is changed)."""
    project = project or MigrationProject.discover()
    settings = resolve(target)
    current_revs = current(settings, project=project)
    _refuse_ambiguous_step(revision, current_revs)

    def plan() -> list[str]:
        steps = project.script.iterate_revisions(
            current_revs or "base", revision, select_for_downgrade=True
        )
        return [s.revision for s in steps]

    return _guarded(plan, settings, "planning the downgrade")


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
    settings = resolve(target)
    rows, versioned = _with_connection(settings, read_current, "reading the migration state")
    return status_from(project.script, rows, versioned)


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
    applied: set[str] | None = None
    if target is not None:
        state = status(target, project=project)
        applied = ancestry(script, [r for r in state.current if r not in state.unknown])
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
                applied=None if applied is None else node.revision in applied,
            )
        )
    return result


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
        settings = resolve(target)
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
        raise MigrationError(f"Branch {label} has {len(own)} head(s): nothing to merge.")
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

    Lists branches with several heads, revisions not applied yet, and then (once the
    database is at head) every difference between the models and the schema.
    """
    project = project or MigrationProject.discover()
    settings = resolve(target)
    script = project.script
    problems = multiple_heads(script)
    models = list(metadata) if metadata is not None else project.metadata()

    def inspect_db(conn: Connection) -> list[str]:
        rows, versioned = read_current(conn)
        state = status_from(script, rows, versioned)
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

    return problems + _with_connection(settings, inspect_db, "comparing the models")


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
    if isinstance(engine, AsyncConnection):
        rows, versioned = await engine.run_sync(read_current)
    else:
        async with engine.connect() as conn:
            rows, versioned = await conn.run_sync(read_current)
    return status_from(project.script, rows, versioned)


# -- plumbing ------------------------------------------------------------------------------


def resolve(target: Target | None) -> Settings:
    """Settings for `target`; the environment supplies everything it does not say."""
    if isinstance(target, Settings):
        settings = target
    elif target is None:
        settings = Settings()
    else:
        url = to_asyncpg_url(target) if isinstance(target, str) else target
        settings = Settings().with_url(url)
    if settings.url is None:
        raise ConfigurationError(
            "No database is configured: set DATABASE_URL (or DATABASE_HOST/NAME/USER/PASSWORD)."
        )
    return settings


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
        raise MigrationError(f"{doing[:1].upper()}{doing[1:]} failed: {exc}") from None
    except Exception as exc:
        raise as_pgstack_error(exc, url, doing) from None


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
