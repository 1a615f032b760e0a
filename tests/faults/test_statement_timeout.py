"""R-F4: a statement over `statement_timeout` is cancelled with a clear error, and its
connection serves the next request."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fault_app import create_rows_table, served, settings
from fault_harness import Primary
from sqlalchemy.engine import URL

pytestmark = pytest.mark.faults


async def test_a_statement_over_the_timeout_is_cancelled_and_its_connection_reused(
    primary: Primary, route: tuple[str, URL, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    # proves: R-F4, C8
    name, url, extra = route
    await create_rows_table(primary.url)
    # One connection: the request after the cancelled one must run on the very same.
    config = settings(url, database_pool_size=1, database_statement_timeout_ms=300, **extra)
    async with served(config) as client:
        started = time.monotonic()
        answer = await client.get("/sleep", params={"seconds": 5})
        cancelled_after = time.monotonic() - started
        assert answer.status_code == 503
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["status"] == 503
        # A 5xx body stays generic; the log says what happened and what to do.
        logged = [r.getMessage() for r in caplog.records if r.name == "pgstack.web"]
        assert any(
            "StatementTimeoutError on GET /sleep" in m and "DATABASE_STATEMENT_TIMEOUT_MS" in m
            for m in logged
        ), logged
        # The same (only) connection serves the next requests, a write and a read.
        assert (await client.post("/rows/1")).status_code == 201
        assert (await client.get("/rows/count")).json() == {"count": 1}
        assert (await client.get("/sleep", params={"seconds": 0.01})).status_code == 200
    print(
        f"\nR-F4 [{name}]: pg_sleep(5) under a 300 ms statement_timeout answered 503 after "
        f"{cancelled_after * 1000:.0f} ms; the connection then served 3 requests"
    )
    assert cancelled_after < 5
