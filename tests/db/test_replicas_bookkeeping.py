"""Bookkeeping writes (a rate-limit count) do not send the request's reads to the primary."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

from pydantic import SecretStr
from sqlalchemy import text

from pgstack import Database, Settings
from pgstack.db.replicas import wrote_within
from pgstack.tenancy import RateLimiter


def _fresh(fn: Callable[[], Awaitable[bool]]) -> Awaitable[bool]:
    """Run `fn` as a new request runs: a task with an empty context."""
    return asyncio.create_task(fn(), context=contextvars.Context())


async def test_a_rate_limit_hit_leaves_the_requests_reads_on_the_replicas(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: C6 (reads go to replicas), N4: every authenticated request counts a rate-limit
    # hit; were that a write of the request's own, no authenticated route would read a replica.
    url = pgstack_migrated_settings.url.render_as_string(hide_password=False)
    settings = pgstack_migrated_settings.model_copy(
        update={"database_replica_urls": [SecretStr(url)]}
    )
    async with Database(settings) as db:
        assert db.replicas is not None
        limiter = RateLimiter(db)

        async def one_limit() -> bool:
            await limiter.hit("user:bookkeeping", "100/minute")
            return wrote_within(60)

        async def two_limits() -> bool:
            await limiter.hit("user:bookkeeping", ["100/minute", "1000/hour"])
            return wrote_within(60)

        async def refused() -> bool:
            await limiter.hit("user:refused", "1/hour")
            await limiter.hit("user:refused", "1/hour")
            return wrote_within(60)

        async def a_real_write() -> bool:
            async with db.transaction() as session:
                await session.execute(text("CREATE TEMP TABLE written (n int)"))
            return wrote_within(60)

        assert await _fresh(one_limit) is False
        assert await _fresh(two_limits) is False
        assert await _fresh(refused) is False
        assert await _fresh(a_real_write) is True  # the request's own write still counts
