"""Query budgets: count the statements a block sends, so N+1 regressions fail a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from pgstack.db.database import Database


@contextmanager
def record_statements(db: Database) -> Iterator[list[str]]:
    """Collect, in order, every SQL statement `db` sends while the block runs."""
    log: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        log.append(statement)

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def assert_max_queries(db: Database, limit: int) -> Iterator[list[str]]:
    """Fail if the block sends more than `limit` statements through `db`; list them if so.

    Statements on the read lane are seen; statements sent on a raw driver connection (the
    token vault's hot read when the read lane is off) are not.
    """
    with record_statements(db) as log:
        yield log
    if len(log) > limit:
        listing = "\n".join(f"  {i}. {' '.join(sql.split())[:200]}" for i, sql in enumerate(log, 1))
        raise AssertionError(
            f"{len(log)} statements ran where at most {limit} were expected (an N+1 "
            f"pattern? load related rows with selectinload):\n{listing}"
        )
