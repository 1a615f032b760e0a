"""Bookkeeping writes (a rate-limit count, a key's last use) leave reads on the replicas."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import SecretStr
from sqlalchemy import text

from pgstack import Database, Settings
from pgstack.db.replicas import wrote_within
from pgstack.identity import Identity
from pgstack.tenancy import RateLimiter

PASSWORD = "a long and unusual passphrase 7"


def _fresh(fn: Callable[[], Awaitable[bool]]) -> Awaitable[bool]:
    """Run `fn` as a new request runs: a task with an empty context."""
    return asyncio.create_task(fn(), context=contextvars.Context())


async def test_bookkeeping_writes_leave_the_requests_reads_on_the_replicas(
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

        async def a_key_used() -> bool:
            await Identity(db).api_keys.verify(issued.key)  # first use: last_used_at written
            return wrote_within(60)

        async def issue() -> bool:
            nonlocal issued
            user = await Identity(db).users.create("keys@example.com", PASSWORD, verified=True)
            issued = await Identity(db).api_keys.create(user.id, "bookkeeping")
            return wrote_within(60)

        issued: Any = None
        assert await _fresh(issue) is True
        assert await _fresh(a_key_used) is False
        assert await _fresh(one_limit) is False
        assert await _fresh(two_limits) is False
        assert await _fresh(refused) is False
        assert await _fresh(a_real_write) is True  # the request's own write still counts
