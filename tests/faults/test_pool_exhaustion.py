"""R-F3: with every connection taken, a request answers 503 problem details within the pool
timeout, and the service recovers by itself when connections come back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fault_app import create_rows_table, served, settings
from fault_harness import Primary
from sqlalchemy.engine import URL

pytestmark = pytest.mark.faults

POOL_TIMEOUT = 1.0


async def test_an_exhausted_pool_answers_503_within_its_timeout_then_recovers(
    primary: Primary, route: tuple[str, URL, dict[str, Any]]
) -> None:
    # proves: R-F3, C8
    name, url, extra = route
    await create_rows_table(primary.url)
    config = settings(url, database_pool_size=2, database_pool_timeout=POOL_TIMEOUT, **extra)
    async with served(config) as client:
        # Two slow requests hold both connections.
        holders = [
            asyncio.create_task(client.get("/sleep", params={"seconds": 3})) for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        answers = await asyncio.gather(*(client.post(f"/rows/{i}") for i in range(5)))
        waited = time.monotonic() - started
        assert [a.status_code for a in answers] == [503] * 5
        for answer in answers:
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["status"] == 503
        assert [(await h).status_code for h in holders] == [200, 200]
        # Recovered: the same app serves writes again, with no restart.
        assert [(await client.post(f"/rows/{i}")).status_code for i in range(5)] == [201] * 5
        assert (await client.get("/rows/count")).json() == {"count": 5}
    print(
        f"\nR-F3 [{name}]: 5 requests with both connections taken answered 503 after "
        f"{waited * 1000:.0f} ms (pool timeout {POOL_TIMEOUT * 1000:.0f} ms); 5 writes then "
        "succeeded on the same app"
    )
    # Bounded by the pool timeout (plus scheduling), not by the holders' 3 s.
    assert waited < POOL_TIMEOUT + 1.5
