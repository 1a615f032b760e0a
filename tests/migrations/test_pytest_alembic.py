"""pytest-alembic's built-in tests, run as docs/migrations.md shows an application to run them.

Each runs twice: on pgstack's own migrations, and on an application's: the sample app with
its first revision depending on pgstack's head, as `pgstack db revision` writes it today, so
the history is the single line pytest-alembic walks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from pytest_alembic.plugin.fixtures import alembic_runner
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from pytest_alembic.tests.experimental import test_downgrade_leaves_no_trace
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pgstack.migrations import MigrationProject, heads

# proves: G4, D5 (the five tests below are pytest-alembic's own)
__all__ = [
    "alembic_runner",
    "test_downgrade_leaves_no_trace",
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]


@pytest.fixture(params=["pgstack", "application"])
def migration_project(request: pytest.FixtureRequest, sample_copy: Path) -> MigrationProject:
    if request.param == "pgstack":
        return MigrationProject.pgstack_only()
    first = sample_copy / "migrations" / "versions" / "sampleapp_0001_authors_and_notes.py"
    (pgstack_head,) = heads(MigrationProject.pgstack_only())
    first.write_text(first.read_text().replace('("pgstack_0001",)', f'("{pgstack_head}",)'))
    return MigrationProject.from_pyproject(sample_copy)


@pytest.fixture
def alembic_config(migration_project: MigrationProject) -> Config:
    return migration_project.alembic_config(**{"pgstack.metadata": migration_project.metadata()})


@pytest.fixture
def alembic_engine(pgstack_empty_url: URL) -> Iterator[AsyncEngine]:
    # NullPool: each command runs its own event loop, and a pooled connection would outlive it.
    yield create_async_engine(pgstack_empty_url, poolclass=NullPool)
