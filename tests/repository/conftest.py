"""Fixtures for repository tests: the statements a test sends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgstack.db.database import Database
from pgstack.testing import record_statements


@pytest.fixture
def sql_log(pgstack_db: Database) -> Iterator[list[str]]:
    """Every SQL statement the test's Database sends, in order (COPY data excluded)."""
    with record_statements(pgstack_db) as log:
        yield log
