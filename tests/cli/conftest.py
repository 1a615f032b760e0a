"""The sample application (tests/fixtures/sampleapp) for the migration commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pgstack.migrations import MigrationProject
from pgstack.testing.templates import TemplateDatabases

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sampleapp"


@pytest.fixture(scope="session")
def sample_project() -> MigrationProject:
    return MigrationProject.from_pyproject(SAMPLE)


@pytest.fixture
def sample_url(
    pgstack_templates: TemplateDatabases, sample_project: MigrationProject
) -> Iterator[URL]:
    """A database of this test's own at the head of pgstack's and the sample app's migrations."""
    url = pgstack_templates.clone(sample_project)
    yield url
    pgstack_templates.drop(url)
