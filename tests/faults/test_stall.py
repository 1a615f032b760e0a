"""R-F5: a stalled server (every process SIGSTOPped: connections open, nothing answers) does not
hold a request past its timeout, and the service answers again once the server does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fault_app import create_rows_table, served, settings
from fault_harness import Primary
from sqlalchemy.engine import URL

pytestmark = pytest.mark.faults

STATEMENT_TIMEOUT_MS = 500
CONNECT_TIMEOUT_S = 2.0
POOL_TIMEOUT_S = 2.0
# The longest a request may take while the server is stalled: a ping and a statement on a
# pooled connection, or opening one, each bounded (see the test), plus scheduling slack.
BOUND_S = CONNECT_TIMEOUT_S + POOL_TIMEOUT_S + 2 * (STATEMENT_TIMEOUT_MS / 1000 + 1.0) + 1.0


async def test_a_stalled_server_does_not_hold_requests_past_their_timeout(
    primary: Primary, route: tuple[str, URL, dict[str, Any]]
) -> None:
    # proves: R-F5, C8
    name, url, extra = route
    await create_rows_table(primary.url)
    config = settings(
        url,
        database_statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        database_connect_timeout=CONNECT_TIMEOUT_S,
        database_pool_timeout=POOL_TIMEOUT_S,
        **extra,
    )
    async with served(config) as client:
        assert (await client.post("/rows/1")).status_code == 201
        primary.pause()
        try:
            started = time.monotonic()

            async def timed(request: Any) -> tuple[int, float]:
                began = time.monotonic()
                answer = await asyncio.wait_for(request, 60)  # the test's own safety net
                return answer.status_code, time.monotonic() - began

            results = await asyncio.gather(
                *(timed(client.post(f"/rows/{i}")) for i in range(2, 6)),
                *(timed(client.get("/rows/count")) for _ in range(4)),
            )
            stalled_for = time.monotonic() - started
        finally:
            primary.resume()
        slowest = max(seconds for _, seconds in results)
        statuses = sorted({status for status, _ in results})
        # Back by itself once the server answers again.
        deadline = time.monotonic() + 20
        while (await client.get("/rows/count")).status_code != 200:
            assert time.monotonic() < deadline, "the service did not answer again"
            await asyncio.sleep(0.2)
        assert (await client.post("/rows/100")).status_code == 201
    print(
        f"\nR-F5 [{name}]: 8 requests to a stalled server answered {statuses} within "
        f"{slowest * 1000:.0f} ms (slowest; bound {BOUND_S:.1f} s); all done after "
        f"{stalled_for * 1000:.0f} ms; served again after resume"
    )
    assert statuses == [503]
    assert slowest < BOUND_S
