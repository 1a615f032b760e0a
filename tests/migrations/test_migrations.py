"""pgstack's migrations and an application's on top: round trips, drift, locks, heads."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest
from sqlalchemy import Column, Integer, MetaData
from sqlalchemy.engine import URL

from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import MigrationError
from pgstack.migrations import (
    MigrationProject,
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
    status,
    upgrade,
    upgrade_async,
)
from pgstack.migrations._env import LOCK_KEY
from pgstack.migrations.models import SchemaInfo
from pgstack.migrations.project import PGSTACK_MODEL_MODULES, pgstack_metadata
from pgstack.orm import Base
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift, schema_snapshot

PGSTACK_ONLY = MigrationProject.pgstack_only()
# pgstack's revisions oldest first, and its head: modules add revisions to the chain.
PGSTACK_CHAIN = [info.revision for info in reversed(history(project=PGSTACK_ONLY))]
PGSTACK_HEAD = (PGSTACK_CHAIN[-1],)


async def fetchval(url: URL, query: str) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def app_project(root: Path, revisions: dict[str, str]) -> MigrationProject:
    """A throwaway app whose revision files are `revisions` (file stem -> body)."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    for stem, body in revisions.items():
        (versions / f"{stem}.py").write_text(textwrap.dedent(body))
    return MigrationProject.build(root=root, migrations="migrations", branch="tmpapp")


def rev(revision: str, down: str | None, upgrade_body: str, downgrade_body: str) -> str:
    first = down is None
    return f'''
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = {down!r}
branch_labels = {("tmpapp",) if first else None!r}
depends_on = {("pgstack_0001",) if first else None!r}


def upgrade():
    {upgrade_body}


def downgrade():
    {downgrade_body}
'''


# -- round trips ---------------------------------------------------------------------------


def test_pgstack_migrations_round_trip(pgstack_empty_url: URL) -> None:
    # proves: G2, G4
    assert_migrations_roundtrip(pgstack_empty_url, project=PGSTACK_ONLY)
    assert current(pgstack_empty_url, project=PGSTACK_ONLY) == PGSTACK_HEAD
    assert is_at_head(pgstack_empty_url, project=PGSTACK_ONLY)
    snapshot = schema_snapshot(pgstack_empty_url)
    assert "relation public.pgstack_meta (r)" in snapshot
    assert "constraint pk_pgstack_meta on pgstack_meta: PRIMARY KEY (key)" in snapshot


def test_sample_app_round_trip_on_top_of_pgstack(
    pgstack_empty_url: URL, sample_project: MigrationProject
) -> None:
    # proves: G2, G4
    assert_migrations_roundtrip(pgstack_empty_url, project=sample_project)
    state = status(pgstack_empty_url, project=sample_project)
    assert state.at_head
    assert set(state.heads) == {*PGSTACK_HEAD, "sampleapp_0001"}
    snapshot = schema_snapshot(pgstack_empty_url)
    assert any(line.startswith("constraint ck_sample_notes_status") for line in snapshot)
    assert any("ix_sample_notes_author_id" in line for line in snapshot)


def test_app_revision_depends_on_pgstack(sample_url: URL, sample_project: MigrationProject) -> None:
    # proves: G2
    revisions = {info.revision: info for info in history(sample_url, project=sample_project)}
    assert all(info.applied for info in revisions.values())
    assert revisions["sampleapp_0001"].depends_on == ("pgstack_0001",)
    assert revisions["sampleapp_0001"].branches == ("sampleapp",)
    assert all(revisions[rev].branches == ("pgstack",) for rev in PGSTACK_CHAIN)
    assert set(heads(sample_project)) == {*PGSTACK_HEAD, "sampleapp_0001"}


@pytest.mark.parametrize("drops_type", [False, True])
def test_round_trip_catches_an_enum_left_behind(
    pgstack_empty_url: URL, tmp_path: Path, drops_type: bool
) -> None:
    # proves: G4, D5
    drop = "op.drop_table('moods'); sa.Enum(name='mood').drop(op.get_bind())"
    project = app_project(
        tmp_path,
        {
            "tmpapp_0001": rev(
                "tmpapp_0001",
                None,
                "op.create_table('moods', sa.Column('id', sa.Integer, primary_key=True), "
                "sa.Column('mood', sa.Enum('happy', 'sad', name='mood')))",
                drop if drops_type else "op.drop_table('moods')",
            )
        },
    )
    if drops_type:
        assert_migrations_roundtrip(pgstack_empty_url, project=project)
        return
    with pytest.raises(AssertionError, match=r"left behind: type public\.mood \(e\) happy,sad"):
        assert_migrations_roundtrip(pgstack_empty_url, project=project)


async def test_citext_is_dropped_only_when_the_revision_created_it(pgstack_empty_url: URL) -> None:
    # proves: G2
    url = pgstack_empty_url
    has = "SELECT count(*) FROM pg_extension WHERE extname = 'citext'"
    await upgrade_async(url, project=PGSTACK_ONLY)
    assert await fetchval(url, has) == 1
    citext_row = "SELECT value FROM pgstack_meta WHERE key = 'extension.citext'"
    assert await fetchval(url, citext_row) == "created by pgstack_0001"
    await downgrade_async(url, "base", project=PGSTACK_ONLY)
    assert await fetchval(url, has) == 0

    # A database prepared by `db init` already has it: the downgrade must leave it there.
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("CREATE EXTENSION citext")
    finally:
        await conn.close()
    await upgrade_async(url, project=PGSTACK_ONLY)
    assert await fetchval(url, citext_row) is None
    await downgrade_async(url, "base", project=PGSTACK_ONLY)
    assert await fetchval(url, has) == 1


# -- drift ---------------------------------------------------------------------------------


def explicit_metadata(sample_models: ModuleType) -> list[MetaData]:
    """pgstack's table and the sample app's, independent of what else is on pgstack's Base."""
    pgstack_md = MetaData(naming_convention=SchemaInfo.metadata.naming_convention)
    pgstack_metadata()  # imports every module in PGSTACK_MODEL_MODULES
    for mapper in sorted(Base.registry.mappers, key=lambda m: m.class_.__name__):
        if mapper.class_.__module__ in PGSTACK_MODEL_MODULES:
            mapper.local_table.to_metadata(pgstack_md)
    return [pgstack_md, sample_models.Base.metadata]


def test_no_drift_between_sample_models_and_migrations(
    sample_url: URL, sample_project: MigrationProject, sample_models: ModuleType
) -> None:
    # proves: G4, G3
    assert_no_drift(sample_url, explicit_metadata(sample_models), project=sample_project)


@pytest.mark.parametrize(
    ("sql", "reported"),
    [
        (
            "ALTER TABLE sample_notes DROP COLUMN body",
            "column sample_notes.body: in the models, missing from the database",
        ),
        (
            "ALTER TABLE sample_notes ALTER COLUMN title TYPE varchar(20)",
            "column sample_notes.title: type VARCHAR(20) in the database, TEXT in the models",
        ),
        (
            "ALTER TABLE sample_notes ALTER COLUMN body SET NOT NULL",
            "column sample_notes.body: NOT NULL in the database, nullable in the models",
        ),
        (
            "ALTER TABLE sample_notes ALTER COLUMN status DROP DEFAULT",
            "column sample_notes.status: server default none in the database, draft in the models",
        ),
        (
            "DROP INDEX ix_sample_notes_author_id",
            "index ix_sample_notes_author_id on sample_notes (author_id): in the models",
        ),
        (
            "ALTER TABLE sample_notes DROP CONSTRAINT ck_sample_notes_status",
            "check constraint ck_sample_notes_status is in the models, missing",
        ),
        (
            "ALTER TABLE sample_notes DROP CONSTRAINT uq_sample_notes_author_id_title",
            "constraint uq_sample_notes_author_id_title on sample_notes: in the models",
        ),
        (
            "ALTER TABLE sample_notes DROP CONSTRAINT fk_sample_notes_author_id_sample_authors",
            "foreign key fk_sample_notes_author_id_sample_authors on sample_notes: in the models",
        ),
        ("CREATE TABLE stray (id int)", "table stray: in the database, not in the models"),
    ],
)
async def test_drift_names_what_differs(
    sample_url: URL,
    sample_project: MigrationProject,
    sample_models: ModuleType,
    sql: str,
    reported: str,
) -> None:
    # proves: G4, G3
    conn = await asyncpg.connect(asyncpg_dsn(sample_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    with pytest.raises(AssertionError) as failure:
        assert_no_drift(sample_url, explicit_metadata(sample_models), project=sample_project)
    assert reported in str(failure.value)


def test_a_column_only_in_the_models_is_drift(
    sample_url: URL, sample_project: MigrationProject, sample_models: ModuleType
) -> None:
    # proves: G4, G3
    drifted = MetaData(naming_convention=sample_models.Base.metadata.naming_convention)
    for table in sample_models.Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["sample_notes"].append_column(Column("priority", Integer, nullable=True))
    pgstack_md = explicit_metadata(sample_models)[0]
    problems = check(sample_url, project=sample_project, metadata=[pgstack_md, drifted])
    assert problems == [
        "column sample_notes.priority: in the models, missing from the database (INTEGER)"
    ]


def test_check_reports_pending_revisions_before_comparing(
    pgstack_empty_url: URL, sample_project: MigrationProject, sample_models: ModuleType
) -> None:
    # proves: G3
    upgrade(pgstack_empty_url, "pgstack@head", project=sample_project)
    problems = check(
        pgstack_empty_url, project=sample_project, metadata=explicit_metadata(sample_models)
    )
    assert len(problems) == 1
    assert problems[0].startswith("not applied: sampleapp_0001 (sampleapp: authors and notes)")


# -- D5: heads, locks, event loops ---------------------------------------------------------


def test_two_heads_on_a_branch_are_refused_until_merged(
    pgstack_empty_url: URL, tmp_path: Path
) -> None:
    # proves: D5
    table = "op.create_table('{0}', sa.Column('id', sa.Integer, primary_key=True))"
    revisions = {
        "tmpapp_0001": rev("tmpapp_0001", None, table.format("t1"), "op.drop_table('t1')"),
        "tmpapp_0002a": rev(
            "tmpapp_0002a", "tmpapp_0001", table.format("t2"), "op.drop_table('t2')"
        ),
        "tmpapp_0002b": rev(
            "tmpapp_0002b", "tmpapp_0001", table.format("t3"), "op.drop_table('t3')"
        ),
    }
    project = app_project(tmp_path, revisions)
    with pytest.raises(
        MigrationError, match=r"branch tmpapp has 2 heads \(tmpapp_0002a, tmpapp_0002b\)"
    ):
        upgrade(pgstack_empty_url, project=project)
    assert status(pgstack_empty_url, project=project).versioned is False
    assert any(
        "branch tmpapp has 2 heads" in p
        for p in check(pgstack_empty_url, project=project, metadata=[])
    )

    path = merge("join t2 and t3", branch="tmpapp", project=project)
    assert path.parent == tmp_path / "migrations" / "versions"
    # The same project object sees the merge it just wrote.
    applied = upgrade(pgstack_empty_url, project=project)
    assert {"tmpapp_0002a", "tmpapp_0002b"} <= set(applied)
    assert is_at_head(pgstack_empty_url, project=project)


async def test_waiting_for_the_migration_lock_is_bounded(pgstack_empty_url: URL) -> None:
    # proves: D5
    holder = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        settings = Settings(
            database_url=pgstack_empty_url.render_as_string(hide_password=False),
            migration_lock_wait_s=0.3,
            _env_file=None,
        )
        with pytest.raises(MigrationError) as failure:
            upgrade(settings, project=PGSTACK_ONLY)
        assert "held the migration lock" in failure.value.message
        assert f"pid {holder.get_server_pid()}" in failure.value.message
        assert status(settings, project=PGSTACK_ONLY).versioned is False
    finally:
        await holder.close()
    assert upgrade(pgstack_empty_url, project=PGSTACK_ONLY) == PGSTACK_CHAIN


async def test_ddl_gives_up_on_a_busy_table_after_the_lock_timeout(
    pgstack_empty_url: URL, tmp_path: Path
) -> None:
    # proves: D5
    project = app_project(
        tmp_path,
        {
            "tmpapp_0001": rev(
                "tmpapp_0001",
                None,
                "op.add_column('pgstack_meta', sa.Column('note', sa.Text()))",
                "op.drop_column('pgstack_meta', 'note')",
            )
        },
    )
    upgrade(pgstack_empty_url, "pgstack@head", project=project)
    settings = Settings(
        database_url=pgstack_empty_url.render_as_string(hide_password=False),
        migration_lock_timeout_ms=200,
        _env_file=None,
    )
    reader = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    try:
        # A long transaction that read the table: ALTER TABLE must wait for it.
        transaction = reader.transaction()
        await transaction.start()
        await reader.fetch("SELECT * FROM pgstack_meta")
        with pytest.raises(MigrationError, match="waited more than 200 ms"):
            upgrade(settings, project=project)
        assert status(settings, project=project).missing == ("tmpapp_0001",)
        await transaction.rollback()
    finally:
        await reader.close()
    assert upgrade(settings, project=project) == ["tmpapp_0001"]


async def test_migrations_run_from_inside_a_running_event_loop(pgstack_empty_url: URL) -> None:
    # proves: D5, G1
    # The plain function works here too (on a worker thread), as an app's lifespan may call it.
    assert upgrade(pgstack_empty_url, project=PGSTACK_ONLY) == PGSTACK_CHAIN
    assert await downgrade_async(pgstack_empty_url, "base", project=PGSTACK_ONLY) == list(
        reversed(PGSTACK_CHAIN)
    )
    assert await upgrade_async(pgstack_empty_url, project=PGSTACK_ONLY) == PGSTACK_CHAIN
    assert await upgrade_async(pgstack_empty_url, project=PGSTACK_ONLY) == []


def test_downgrade_to_an_unknown_revision_is_a_clear_error(pgstack_empty_url: URL) -> None:
    # proves: G3
    upgrade(pgstack_empty_url, project=PGSTACK_ONLY)
    with pytest.raises(MigrationError, match="no_such_rev"):
        downgrade(pgstack_empty_url, "no_such_rev", project=PGSTACK_ONLY)
    assert current(pgstack_empty_url, project=PGSTACK_ONLY) == PGSTACK_HEAD


WRAPPED_MODELS = """
from sqlalchemy import DateTime, Integer, MetaData, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.orm import NAMING_CONVENTION


class Stamp(TypeDecorator):
    impl = DateTime
    cache_ok = True


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[object] = mapped_column(Stamp(timezone=True), index=True)
"""


def test_autogenerate_writes_wrapped_types_as_their_database_type(
    pgstack_empty_url: URL, tmp_path: Path, sample_models: ModuleType
) -> None:
    # proves: G3, G1
    module = f"wrapped_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(WRAPPED_MODELS)
    (tmp_path / "migrations").mkdir()
    sys.path.insert(0, str(tmp_path))
    try:
        models = importlib.import_module(module)
    finally:
        sys.path.remove(str(tmp_path))
    project = MigrationProject.build(
        root=tmp_path, migrations="migrations", models=module, branch="tmpapp"
    )
    metadata = [explicit_metadata(sample_models)[0], models.Base.metadata]
    upgrade(pgstack_empty_url, project=project)
    path = revision(
        "events", autogenerate=True, target=pgstack_empty_url, project=project, metadata=metadata
    )
    body = path.read_text()
    assert "sa.Column('at', sa.DateTime(timezone=True), nullable=False)" in body
    assert "Stamp" not in body
    assert "op.f('ix_events_at')" in body  # the naming convention, rendered

    # The same project object sees the revision it just wrote.
    assert len(upgrade(pgstack_empty_url, project=project)) == 1
    assert check(pgstack_empty_url, project=project, metadata=metadata) == []


def test_downgrade_to_the_pgstack_revision_an_app_branch_depends_on(
    pgstack_empty_url: URL, sample_copy: Path
) -> None:
    # proves: G3, G2
    # The app's first revision depends on pgstack's head, as `pgstack db revision` writes it:
    # only `depends_on` leads from that head to the app's, and Alembic alone finds nothing
    # to drop ("not a valid downgrade target").
    (pgstack_head,) = heads(MigrationProject.pgstack_only())
    first = sample_copy / "migrations" / "versions" / "sampleapp_0001_authors_and_notes.py"
    first.write_text(first.read_text().replace('("pgstack_0001",)', f'("{pgstack_head}",)'))
    project = MigrationProject.from_pyproject(sample_copy)
    upgrade(pgstack_empty_url, project=project)
    assert current(pgstack_empty_url, project=project) == ("sampleapp_0001",)

    assert downgrade_plan(pgstack_empty_url, pgstack_head, project=project) == ["sampleapp_0001"]
    run = run_downgrade(pgstack_empty_url, pgstack_head, project=project)
    assert run.applied == ["sampleapp_0001"]
    assert run.current == (pgstack_head,)
    assert current(pgstack_empty_url, project=project) == (pgstack_head,)
    assert "relation sample_authors (r)" not in "\n".join(schema_snapshot(pgstack_empty_url))
