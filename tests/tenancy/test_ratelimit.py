"""Rate limits: exact allowance under concurrency, wall clock, windows, usage, cleanup."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import DatabaseUnavailableError, RateLimitedError
from pgstack.tenancy import InvalidRateLimitError, RateLimit, RateLimiter, parse_limits
from pgstack.tenancy.ratelimit import HIT_SQL


async def away_from_boundary(seconds: int, margin: float) -> None:
    """Sleep until at least `margin` seconds remain in the current UTC window of `seconds`."""
    left = seconds - time.time() % seconds
    if left < margin:
        await asyncio.sleep(left + 0.05)


@pytest.fixture
def limiter(pgstack_migrated_db: Database) -> RateLimiter:
    return RateLimiter(pgstack_migrated_db)


async def test_1000_concurrent_hits_at_100_per_minute_allow_exactly_100(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: N4
    # Calendar windows: every hit of one minute window counts against the same row, so
    # exactly the quota passes, however many hits race for it (docs/ratelimits.md).
    # Two Databases, as two service processes with pools of their own, share the counter.
    dbs = [Database(pgstack_migrated_settings), Database(pgstack_migrated_settings)]
    for db in dbs:
        await db.connect()
    try:
        limiters = [RateLimiter(db) for db in dbs]
        await away_from_boundary(60, margin=15)
        results = await asyncio.gather(
            *(limiters[i % 2].hit("tenant:t1:search", "100/minute") for i in range(1000))
        )
        allowed = [r for r in results if r.allowed]
        refused = [r for r in results if not r.allowed]
        assert len(allowed) == 100
        assert len(refused) == 900
        assert sorted(r.remaining for r in allowed) == list(range(100))
        assert {r.reset_at for r in results} == {results[0].reset_at}
        assert all(r.remaining == 0 and 0 < r.retry_after <= 60 for r in refused)
        assert results[0].reset_at.second == 0 and results[0].reset_at.microsecond == 0
        [window] = await limiters[0].usage("tenant:t1:search")
        assert (window.hits, window.refused, window.quota) == (100, 900, 100)
        assert window.usage_percent == 100.0
        # Both pools really ran hits.
        assert all(db.read_pool_stats()["total"] > 0 for db in dbs)  # type: ignore[index]
    finally:
        for db in dbs:
            await db.disconnect()


async def test_a_hit_inside_a_long_transaction_counts_by_the_wall_clock(
    pgstack_migrated_db: Database, limiter: RateLimiter
) -> None:
    # proves: N4
    async with pgstack_migrated_db.transaction() as session:
        started = (await session.execute(text("SELECT now()"))).scalar_one()
        if time.time() % 1 > 0.5:
            await asyncio.sleep(1 - time.time() % 1 + 0.05)
        first = await limiter.hit("user:slow", "1/second", session=session)
        again = await limiter.hit("user:slow", "1/second", session=session)
        await asyncio.sleep(1.1)
        later = await limiter.hit("user:slow", "1/second", session=session)
        # now() still says the transaction's start; the limiter's windows moved on with time.
        assert (await session.execute(text("SELECT now()"))).scalar_one() == started
    assert first.allowed and not again.allowed and later.allowed
    assert later.window.window_start >= first.reset_at > started
    assert later.reset_at - first.reset_at >= timedelta(seconds=1)
    # The hits were part of the session's transaction: committed with it...
    async with pgstack_migrated_db.engine.connect() as conn:
        counted = await conn.scalar(
            text("SELECT sum(hits) FROM pgstack_rate_limits WHERE key = 'user:slow'")
        )
    assert counted == 2
    # ... or rolled back with it.
    with pytest.raises(RuntimeError):
        async with pgstack_migrated_db.transaction() as session:
            assert (await limiter.hit("user:undone", "5/hour", session=session)).allowed
            raise RuntimeError("the work failed")
    assert await limiter.usage("user:undone") == []


async def test_hits_outside_the_callers_transaction_use_the_wall_clock_too(
    pgstack_migrated_db: Database, limiter: RateLimiter
) -> None:
    # proves: N4
    async with pgstack_migrated_db.transaction() as session:
        started = (await session.execute(text("SELECT now()"))).scalar_one()
        await asyncio.sleep(1.1)
        result = await limiter.hit("user:outside", "5/second")
    assert result.window.checked_at - started >= timedelta(seconds=1)


async def test_several_limits_count_in_all_windows_or_in_none(limiter: RateLimiter) -> None:
    # proves: N4
    await away_from_boundary(60, margin=10)
    # The hour refuses the third hit: the minute window must not count it either.
    results = [await limiter.hit("key:k1", "10/minute; 2/hour") for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert results[2].window.seconds == 3600 and results[2].limit == 2
    assert results[1].remaining == 0  # the hour has none left (the minute has 8)
    usage = {w.seconds: w for w in await limiter.usage("key:k1")}
    assert (usage[60].hits, usage[3600].hits) == (2, 2)
    # The minute refuses: the hour does not count it.
    results = [await limiter.hit("key:k2", "2/minute; 10/hour") for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert results[2].window.seconds == 60 and 0 < results[2].retry_after <= 60
    usage = {w.seconds: w for w in await limiter.usage("key:k2")}
    assert (usage[60].hits, usage[3600].hits) == (2, 2)


async def test_cost_counts_several_hits_and_a_refusal_takes_nothing(limiter: RateLimiter) -> None:
    # proves: N4
    await away_from_boundary(3600, margin=10)
    first = await limiter.hit("tenant:t2:export", "10/hour", cost=7)
    refused = await limiter.hit("tenant:t2:export", "10/hour", cost=4)
    fits = await limiter.hit("tenant:t2:export", "10/hour", cost=3)
    assert (first.allowed, first.remaining) == (True, 3)
    assert (refused.allowed, refused.remaining) == (False, 3)
    assert (fits.allowed, fits.remaining) == (True, 0)
    [window] = await limiter.usage("tenant:t2:export")
    assert (window.hits, window.refused) == (10, 1)


async def test_usage_exceeded_list_and_keys_kept_apart(limiter: RateLimiter) -> None:
    # proves: N4
    await away_from_boundary(86400, margin=10)
    for _ in range(3):
        await limiter.hit("tenant:a:api", "2/day")
    await limiter.hit("tenant:b:api", "2/day")
    [a] = await limiter.usage("tenant:a:api")
    [b] = await limiter.usage("tenant:b:api")
    assert (a.hits, a.refused, a.remaining, a.usage_percent) == (2, 1, 0, 100.0)
    assert (b.hits, b.refused, b.remaining, b.usage_percent) == (1, 0, 1, 50.0)
    assert a.reset_at - a.window_start == timedelta(days=1)
    assert a.reset_at.hour == 0 and a.reset_at.minute == 0  # UTC calendar day
    exceeded = await limiter.exceeded()
    assert [(w.key, w.refused) for w in exceeded] == [("tenant:a:api", 1)]
    assert await limiter.usage("tenant:nobody") == []


async def test_cleanup_deletes_exactly_the_windows_that_ended(
    pgstack_migrated_db: Database, limiter: RateLimiter
) -> None:
    # proves: N4
    await limiter.hit("live:day", "5/day")
    async with pgstack_migrated_db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO pgstack_rate_limits (key, seconds, window_start, expires_at, hits,"
                " quota, refused, allowed) SELECT 'old:' || i, 60, e - interval '1 minute', e,"
                " 1, 5, 0, true FROM generate_series(1, 25) AS i, LATERAL (SELECT"
                " clock_timestamp() - make_interval(mins => i, secs => -30) AS e) AS w"
            )
        )
    # old:i ended i minutes less 30 s ago: old:11 .. old:25 ended over 10 minutes ago.
    assert await limiter.cleanup(older_than_seconds=600, batch_size=4) == 15
    async with pgstack_migrated_db.engine.connect() as conn:
        keys = (await conn.execute(text("SELECT key FROM pgstack_rate_limits"))).scalars().all()
    assert sorted(keys) == sorted(["live:day", *(f"old:{i}" for i in range(1, 11))])
    assert await limiter.cleanup() == 10
    assert [w.key for w in await limiter.usage("live:day")] == ["live:day"]
    assert await limiter.cleanup() == 0


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " ; ",
        "abc",
        "100",
        "/minute",
        "0/minute",
        "-1/minute",
        "1.5/minute",
        "1e9/second",
        "100/fortnight",
        "100/0 minutes",
        "99999999999/second",
        "2000000000/second",
        "100/minute; 5/minute",
        "100/400 days",
        "100/minute; DROP TABLE pgstack_rate_limits",
        "100\x00/minute",
        "100/minute" * 1000,
        "\uff11\uff10\uff10/minute",  # fullwidth digits
    ],
)
async def test_hostile_limit_strings_are_clear_errors(limiter: RateLimiter, spec: str) -> None:
    # proves: N4
    with pytest.raises(InvalidRateLimitError) as caught:
        await limiter.hit("key:x", spec)
    assert caught.value.status_code == 422
    assert "limit" in caught.value.message
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("key", "cost"),
    [("", 1), ("k" * 256, 1), ("a\x00b", 1), ("a\nb", 1), ("k", 0), ("k", -1), ("k", True)],
)
async def test_hostile_keys_and_costs_are_clear_errors(
    limiter: RateLimiter, key: str, cost: int
) -> None:
    # proves: N4
    with pytest.raises(InvalidRateLimitError, match=r"key|cost"):
        await limiter.hit(key, "10/minute", cost=cost)


async def test_a_cost_above_the_quota_is_refused_before_counting(limiter: RateLimiter) -> None:
    # proves: N4
    with pytest.raises(InvalidRateLimitError, match="can never pass"):
        await limiter.hit("k", "10/minute; 3/hour", cost=4)
    assert await limiter.usage("k") == []


def test_limit_strings_in_their_accepted_forms() -> None:
    # proves: N4
    assert parse_limits("100/minute") == (RateLimit(100, 60),)
    assert parse_limits("10 per second; 5000/hour,100000/day") == (
        RateLimit(10, 1),
        RateLimit(5000, 3600),
        RateLimit(100000, 86400),
    )
    assert parse_limits("20/5 minutes") == (RateLimit(20, 300),)
    assert parse_limits("3/Hours") == (RateLimit(3, 3600),)
    assert str(RateLimit(20, 300)) == "20/5 minutes"
    assert str(RateLimit(7, 1)) == "7/second"


async def test_a_hit_stuck_behind_a_held_counter_fails_fast(
    pgstack_migrated_db: Database, pgstack_migrated_settings: Settings
) -> None:
    # proves: N4
    limiter = RateLimiter(pgstack_migrated_db, lock_timeout_ms=200)
    await away_from_boundary(3600, margin=10)
    await limiter.hit("key:held", "100/hour")
    # Another connection holds the window's row lock in an open transaction.
    holder = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_settings.url))  # type: ignore[arg-type]
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.fetch(HIT_SQL, "key:held", [3600], [100], 1, "1s")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="waited longer than 200ms"):
            await limiter.hit("key:held", "100/hour")
        assert time.monotonic() - started < 5
        await tx.rollback()
    finally:
        await holder.close()
    assert (await limiter.hit("key:held", "100/hour")).remaining == 98


async def test_a_refused_hit_becomes_a_429_error_with_headers(limiter: RateLimiter) -> None:
    # proves: N4
    await away_from_boundary(60, margin=10)
    await limiter.hit("key:h", "1/minute")
    refused = await limiter.hit("key:h", "1/minute")
    error = refused.error("search")
    assert isinstance(error, RateLimitedError) and error.status_code == 429
    wait = int(error.headers["Retry-After"])
    # What is left of the UTC minute, rounded up (away_from_boundary keeps it in one minute).
    left = math.ceil(60 - time.time() % 60)
    assert wait in (left, left + 1), (wait, left)
    assert error.headers["RateLimit-Policy"] == '"search";q=1;w=60'
    assert error.headers["RateLimit"] == f'"search";r=0;t={wait}'
    assert error.violated_policies == ["search"]


async def test_an_application_role_with_data_rights_only_can_count_and_clean_up(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: N4, O6
    # The rights `pgstack db init`'s default privileges give the application role: data only.
    role = f"pgstack_rl_app_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_settings.url))  # type: ignore[arg-type]
    try:
        await admin.execute(f'CREATE ROLE "{role}" NOLOGIN NOSUPERUSER NOBYPASSRLS')
        await admin.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON pgstack_rate_limits TO "{role}"'
        )
        await admin.execute(f'SET ROLE "{role}"')
        rows = await admin.fetch(HIT_SQL, "key:role", [60, 3600], [5, 50], 2, "2s")
        assert [(r["seconds"], r["hits"], r["allowed"]) for r in rows] == [
            (60, 2, True),
            (3600, 2, True),
        ]
        await admin.execute("DELETE FROM pgstack_rate_limits WHERE key = 'key:role'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin.execute("TRUNCATE pgstack_rate_limits")
    finally:
        await admin.execute("RESET ROLE")
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
