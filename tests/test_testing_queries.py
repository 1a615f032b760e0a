"""Query budgets from the testing kit catch N+1 patterns."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from pgstack import Database
from pgstack.testing import assert_max_queries, record_statements


async def test_assert_max_queries_passes_within_budget_and_lists_overruns(
    pgstack_db: Database,
) -> None:
    # proves: O4
    async with pgstack_db.session() as session:
        with assert_max_queries(pgstack_db, 2) as log:
            await session.execute(text("SELECT 1"))
            await session.execute(text("SELECT 2"))
        assert [" ".join(s.split()) for s in log][-2:] == ["SELECT 1", "SELECT 2"]

        with pytest.raises(AssertionError) as failure, assert_max_queries(pgstack_db, 2):
            for i in range(5):  # the N+1 shape: one query per item
                await session.execute(text(f"SELECT {i}"))
        message = str(failure.value)
        assert "where at most 2 were expected" in message
        assert "SELECT 4" in message


async def test_record_statements_stops_recording_after_the_block(pgstack_db: Database) -> None:
    # proves: O4
    async with pgstack_db.session() as session:
        with record_statements(pgstack_db) as log:
            await session.execute(text("SELECT 'inside'"))
        await session.execute(text("SELECT 'outside'"))
    assert any("inside" in s for s in log)
    assert not any("outside" in s for s in log)
