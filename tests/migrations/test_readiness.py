"""Readiness says whether the database is at the head of pgstack's and the app's migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from pgstack import Database
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import MigrationError
from pgstack.migrations import MigrationProject, heads, history, migrations_check, status, upgrade
from pgstack.testing.plugin import settings_for
from pgstack.web import create_app

# pgstack's revisions oldest first: its modules keep adding revisions.
PGSTACK_REVISIONS = [
    info.revision for info in reversed(history(project=MigrationProject.pgstack_only()))
]


async def test_ready_passes_at_the_combined_head(
    sample_url: URL, sample_project: MigrationProject, client: Any
) -> None:
    # proves: C5
    app = create_app(settings_for(sample_url), monitor_interval=None, migrations=sample_project)
    async with client(app) as c:
        ready = await c.get("/ready")
    assert ready.status_code == 200
    check = ready.json()["checks"]["migrations"][0]
    assert check["status"] == "pass"
    # pgstack's newer revisions are heads of their own beside the app's.
    expected = {"sampleapp_0001", *heads(MigrationProject.pgstack_only())} - {"pgstack_0001"}
    assert set(check["observedValue"].split(", ")) == expected


async def test_ready_fails_naming_the_missing_revision(
    pgstack_empty_url: URL, sample_project: MigrationProject, client: Any
) -> None:
    # proves: C5
    upgrade(pgstack_empty_url, "pgstack@head", project=sample_project)
    app = create_app(
        settings_for(pgstack_empty_url), monitor_interval=None, migrations=sample_project
    )
    async with client(app) as c:
        ready = await c.get("/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "fail"
    check = body["checks"]["migrations"][0]
    assert check["status"] == "fail"
    assert "missing revision(s): sampleapp_0001 (sampleapp: authors and notes)" in check["output"]


async def test_ready_fails_on_a_database_never_migrated(
    pgstack_empty_url: URL, sample_project: MigrationProject
) -> None:
    # proves: C5
    db = Database(settings_for(pgstack_empty_url))
    db.health_checks.append(migrations_check(sample_project))
    async with db:
        report = await db.health_check()
    check = report.checks["migrations"]
    assert check.status == "fail"
    assert check.output is not None
    for rev in [*PGSTACK_REVISIONS, "sampleapp_0001"]:
        assert rev in check.output


async def test_ready_warns_when_a_newer_release_migrated_first(
    sample_url: URL, sample_project: MigrationProject
) -> None:
    # proves: C5
    conn = await asyncpg.connect(asyncpg_dsn(sample_url))
    try:
        await conn.execute("INSERT INTO alembic_version VALUES ('sampleapp_0002')")
    finally:
        await conn.close()
    db = Database(settings_for(sample_url))
    db.health_checks.append(migrations_check(sample_project))
    async with db:
        report = await db.health_check()
    assert report.status == "warn"
    assert report.http_status == 200
    check = report.checks["migrations"]
    assert check.status == "warn"
    assert check.output is not None and "sampleapp_0002" in check.output


async def test_app_migrates_at_startup(
    pgstack_empty_url: URL, sample_project: MigrationProject, client: Any
) -> None:
    # proves: W1, C5
    app = create_app(
        settings_for(pgstack_empty_url),
        monitor_interval=None,
        migrations=sample_project,
        migrate=True,
    )
    async with client(app) as c:
        assert (await c.get("/startup")).status_code == 200
        ready = await c.get("/ready")
    assert ready.json()["checks"]["migrations"][0]["status"] == "pass"
    assert status(pgstack_empty_url, project=sample_project).at_head


async def test_without_migrations_readiness_has_no_migrations_check(
    pgstack_empty_url: URL, client: Any
) -> None:
    # proves: C5
    app = create_app(settings_for(pgstack_empty_url), monitor_interval=None)
    async with client(app) as c:
        ready = await c.get("/ready")
    assert ready.status_code == 200
    assert "migrations" not in ready.json()["checks"]


# -- rolling deploys -------------------------------------------------------------------------


async def test_an_old_release_starts_and_warns_on_a_database_one_revision_ahead(
    pgstack_empty_url: URL,
    sample_project: MigrationProject,
    sample_copy: Path,
    add_revision: Any,
    client: Any,
) -> None:
    # proves: O6, C5
    add_revision(sample_copy, "sampleapp_0002", "sampleapp_0001", "sample_tags")
    new_release = MigrationProject.from_pyproject(sample_copy)
    upgrade(pgstack_empty_url, project=new_release)  # the new release migrated first

    old_release = create_app(
        settings_for(pgstack_empty_url),
        monitor_interval=None,
        migrations=sample_project,
        migrate=True,
    )
    async with client(old_release) as c:
        started = await c.get("/startup")
        ready = await c.get("/ready")
    assert started.status_code == 200
    assert ready.status_code == 200, ready.text
    check = ready.json()["checks"]["migrations"][0]
    assert check["status"] == "warn"
    assert "sampleapp_0002" in check["output"]
    state = status(pgstack_empty_url, project=sample_project)
    assert state.ahead and state.unknown == ("sampleapp_0002",) and not state.missing
    # The old release changed nothing: the database is still at the new release's head.
    assert status(pgstack_empty_url, project=new_release).at_head


async def test_a_database_on_another_lineage_fails_start_and_readiness(
    pgstack_empty_url: URL,
    sample_project: MigrationProject,
    sample_copy: Path,
    client: Any,
) -> None:
    # proves: O6, C5
    # Another app's first revision on the same database: its head does not descend from
    # sampleapp_0001, so this code cannot be behind it or beside it.
    versions = sample_copy / "migrations" / "versions"
    source = (versions / "sampleapp_0001_authors_and_notes.py").read_text()
    (versions / "sampleapp_0001_authors_and_notes.py").write_text(
        source.replace('"sampleapp_0001"', '"otherapp_0001"')
    )
    upgrade(pgstack_empty_url, project=MigrationProject.from_pyproject(sample_copy))

    db = Database(settings_for(pgstack_empty_url))
    db.health_checks.append(migrations_check(sample_project))
    async with db:
        report = await db.health_check()
    assert report.checks["migrations"].status == "fail"

    app = create_app(
        settings_for(pgstack_empty_url),
        monitor_interval=None,
        migrations=sample_project,
        migrate=True,
    )
    with pytest.raises(MigrationError, match="another lineage") as failed:
        async with client(app):
            pass
    assert "otherapp_0001" in failed.value.message
    assert "sampleapp_0001" in failed.value.message
