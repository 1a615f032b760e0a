"""Rate limits counted in PostgreSQL: `RateLimiter.hit(key, "100/minute")` decides in one statement.

Each limit counts hits in UTC calendar windows (a minute window runs from :00 to :59), one row
per key and window in the UNLOGGED table `pgstack_rate_limits`. A hit is one
`INSERT ... ON CONFLICT DO UPDATE ... RETURNING` that adds its cost only while the window's
count stays within the quota, so concurrent hits can never pass more than the quota: the row
lock orders them. The window comes from `clock_timestamp()` (the wall clock), never `now()`,
which stands still for the length of a transaction. See docs/ratelimits.md for the choice of
calendar windows over GCRA and of UNLOGGED.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, CheckConstraint, DateTime, Index, Integer, Text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.db.metrics import sqlstate_of
from pgstack.db.replicas import bookkeeping
from pgstack.db.session import translated_errors
from pgstack.errors import DatabaseUnavailableError, InvalidInputError, RateLimitedError
from pgstack.orm import Base

if TYPE_CHECKING:
    from pgstack.db.database import Database
    from pgstack.db.session import Session

TABLE = "pgstack_rate_limits"


class RateLimitWindow(Base):
    """One key's count in one calendar window of one length (UNLOGGED: see the docs)."""

    __tablename__ = TABLE
    __table_args__ = (
        CheckConstraint("seconds > 0", name="seconds_positive"),
        CheckConstraint("hits >= 0 AND quota > 0 AND refused >= 0", name="counts_valid"),
        # Cleanup deletes by end of window.
        Index("ix_pgstack_rate_limits_expires_at", "expires_at"),
        {"prefixes": ["UNLOGGED"]},
    )

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    hits: Mapped[int] = mapped_column(Integer)
    quota: Mapped[int] = mapped_column(Integer)
    refused: Mapped[int] = mapped_column(Integer)
    allowed: Mapped[bool] = mapped_column(Boolean)


# -- limits ----------------------------------------------------------------------------------

_UNITS = {
    "second": 1,
    "sec": 1,
    "s": 1,
    "minute": 60,
    "min": 60,
    "m": 60,
    "hour": 3600,
    "h": 3600,
    "day": 86400,
    "d": 86400,
}
_LIMIT = re.compile(
    r"\s*([0-9]{1,10})\s*(?:/|\s+per\s+)\s*([0-9]{1,6})?\s*([a-z]+?)s?\s*", re.I | re.A
)
MAX_QUOTA = 1_000_000_000
MAX_WINDOW_SECONDS = 366 * 86400
MAX_KEY_LENGTH = 255
_EXAMPLE = 'Write it as "100/minute" (or "10/second", "5000/hour", "100000/day", "20/5 minutes").'


class InvalidRateLimitError(InvalidInputError):
    """A limit string, key or cost that the limiter cannot count by."""

    title = "Invalid rate limit"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A quota of hits per window of `seconds` (a parsed "100/minute")."""

    quota: int
    seconds: int

    def __str__(self) -> str:
        for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if self.seconds % size == 0:
                count = self.seconds // size
                return f"{self.quota}/{name}" if count == 1 else f"{self.quota}/{count} {name}s"
        return (
            f"{self.quota}/second" if self.seconds == 1 else f"{self.quota}/{self.seconds} seconds"
        )


def parse_limits(spec: str | RateLimit | Sequence[str | RateLimit]) -> tuple[RateLimit, ...]:
    """The limits of a spec: "100/minute", "10/second; 1000/hour", or RateLimits; shortest first.

    Anything else is an InvalidRateLimitError that names the part it could not read.
    """
    parts: list[str | RateLimit]
    if isinstance(spec, RateLimit):
        parts = [spec]
    elif isinstance(spec, str):
        parts = [p for p in re.split(r"[;,]", spec) if p.strip()]
    else:
        parts = list(spec)
    if not parts:
        raise InvalidRateLimitError(f"A rate limit is empty. {_EXAMPLE}")
    limits = sorted((_parse_one(p) for p in parts), key=lambda limit: limit.seconds)
    seconds = [limit.seconds for limit in limits]
    if len(set(seconds)) != len(seconds):
        raise InvalidRateLimitError(
            f"Two rate limits in {spec!s:.100} count over the same window; keep one per window."
        )
    return tuple(limits)


def _parse_one(part: str | RateLimit) -> RateLimit:
    if isinstance(part, RateLimit):
        limit = part
    elif not isinstance(part, str) or not (match := _LIMIT.fullmatch(part)):
        raise InvalidRateLimitError(f"Cannot read the rate limit {str(part)!r:.60}. {_EXAMPLE}")
    else:
        unit = _UNITS.get(match[3].lower())
        if unit is None:
            raise InvalidRateLimitError(
                f"Unknown time unit {match[3]!r:.20} in the rate limit {part!r:.60}: use "
                "second, minute, hour or day."
            )
        limit = RateLimit(int(match[1]), int(match[2] or 1) * unit)
    if not 1 <= limit.quota <= MAX_QUOTA:
        raise InvalidRateLimitError(
            f"A rate limit's count must be between 1 and {MAX_QUOTA:,} (got {limit.quota})."
        )
    if not 1 <= limit.seconds <= MAX_WINDOW_SECONDS:
        raise InvalidRateLimitError(
            f"A rate limit's window must be between 1 second and 366 days (got {limit.seconds} s)."
        )
    return limit


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One window's count: how much of its quota is used, and when it ends."""

    key: str
    seconds: int
    quota: int
    hits: int
    refused: int
    window_start: datetime
    reset_at: datetime
    #: The database's clock when this was read.
    checked_at: datetime

    @property
    def remaining(self) -> int:
        """Hits the window still allows."""
        return max(0, self.quota - self.hits)

    @property
    def usage_percent(self) -> float:
        """Share of the quota used, 0 to 100."""
        return round(100.0 * self.hits / self.quota, 2)

    @property
    def reset_after(self) -> float:
        """Seconds until the window ends."""
        return max(0.0, (self.reset_at - self.checked_at).total_seconds())

    @property
    def limit(self) -> RateLimit:
        """The limit this window counted by."""
        return RateLimit(self.quota, self.seconds)


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """What one hit decided: allowed or not, what remains, when the window resets."""

    allowed: bool
    key: str
    cost: int
    #: Every window the hit counted in, shortest first (as they stand after the hit).
    windows: tuple[WindowUsage, ...]

    @property
    def window(self) -> WindowUsage:
        """The window that decided: the one that refused, else the one with least left."""
        if not self.allowed:
            refusing = [w for w in self.windows if w.hits + self.cost > w.quota]
            return max(refusing, key=lambda w: w.reset_at)
        return min(self.windows, key=lambda w: (w.remaining, w.reset_at))

    @property
    def limit(self) -> int:
        """The deciding window's quota."""
        return self.window.quota

    @property
    def remaining(self) -> int:
        """Hits the deciding window still allows."""
        return self.window.remaining

    @property
    def reset_at(self) -> datetime:
        """When the deciding window ends."""
        return self.window.reset_at

    @property
    def retry_after(self) -> float:
        """Seconds to wait before this hit could pass (0 when it was allowed)."""
        return 0.0 if self.allowed else self.window.reset_after

    def error(self, policy: str = "default") -> RateLimitedError:
        """The 429 error for this refused hit, with `Retry-After` and `RateLimit-*` headers."""
        wait = max(1, math.ceil(self.retry_after))
        return RateLimitedError(
            f"Rate limit {self.window.limit} ({policy}) exceeded; retry after {wait} second(s).",
            retry_after=wait,
            headers=rate_limit_headers(self, policy),
            violated_policies=[policy],
        )


def rate_limit_headers(result: RateLimitResult, policy: str = "default") -> dict[str, str]:
    """`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for a result."""
    window = result.window
    name = re.sub(r'[^\x21-\x7e]|["\\]', "_", policy)[:64] or "default"
    reset = max(0, math.ceil(window.reset_after))
    return {
        "RateLimit-Policy": f'"{name}";q={window.quota};w={window.seconds}',
        "RateLimit": f'"{name}";r={window.remaining};t={reset}',
    }


# -- the limiter -----------------------------------------------------------------------------

# One statement per hit. The counts of every window of the hit move only if it fits in that
# window; `allowed` records each window's own answer. The lock guard sets a transaction-local
# lock_timeout before the first row is written, so a hit queued behind a stuck row lock fails
# fast instead of holding the request.
_HIT = f"""
INSERT INTO {TABLE} AS c (key, seconds, window_start, expires_at, hits, quota, refused, allowed)
SELECT $1, w.seconds, b.start, b.start + make_interval(secs => w.seconds), $4, w.quota, 0, true
FROM unnest($2::int[], $3::int[]) AS w(seconds, quota)
CROSS JOIN LATERAL (
    SELECT date_bin(make_interval(secs => w.seconds), clock_timestamp(),
                    timestamptz '1970-01-01 00:00:00+00') AS start
) AS b
{{guard}}
ORDER BY w.seconds
ON CONFLICT (key, seconds, window_start) DO UPDATE SET
    hits = c.hits + CASE WHEN c.hits + $4 <= EXCLUDED.quota THEN $4 ELSE 0 END,
    refused = c.refused + CASE WHEN c.hits + $4 <= EXCLUDED.quota THEN 0 ELSE 1 END,
    allowed = c.hits + $4 <= EXCLUDED.quota,
    quota = EXCLUDED.quota
RETURNING key, seconds, quota, hits, refused, window_start, expires_at, clock_timestamp(), allowed
"""
HIT_SQL = _HIT.format(guard="WHERE set_config('lock_timeout', $5, true) IS NOT NULL")
# Inside the caller's transaction the lock_timeout is the caller's: no guard.
_HIT_IN_SESSION = _HIT.format(guard="")
# A hit refused by one of several windows rolls back every window's counts; its refusal is
# then recorded on the windows that refused it (the exceeded list reads them).
_REFUSED = f"""
UPDATE {TABLE} AS c SET refused = c.refused + 1
FROM unnest($2::int[], $3::timestamptz[]) AS r(seconds, window_start)
WHERE c.key = $1 AND c.seconds = r.seconds AND c.window_start = r.window_start
"""
_USAGE = f"""
SELECT key, seconds, quota, hits, refused, window_start, expires_at, clock_timestamp()
FROM {TABLE} WHERE key = $1 AND expires_at > clock_timestamp() ORDER BY seconds
"""
_EXCEEDED = f"""
SELECT key, seconds, quota, hits, refused, window_start, expires_at, clock_timestamp()
FROM {TABLE} WHERE refused > 0 AND expires_at > clock_timestamp() - make_interval(secs => $1)
ORDER BY refused DESC, key, seconds LIMIT $2
"""
_CLEANUP = f"""
DELETE FROM {TABLE} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {TABLE} WHERE expires_at <= clock_timestamp() - make_interval(secs => $1)
    LIMIT $2))
"""
_LOCK_NOT_AVAILABLE = "55P03"


class RateLimiter:
    """Counts hits per key against limits such as "100/minute", in PostgreSQL.

        limiter = RateLimiter(db)
        result = await limiter.hit(f"tenant:{tenant_id}:search", "100/minute")
        if not result.allowed:
            raise result.error("search")  # a RateLimitedError: HTTP 429

    `lock_timeout_ms` bounds how long a hit waits for its window's row lock (held by another
    hit for microseconds; a long wait means a stuck transaction) before it fails with
    DatabaseUnavailableError.
    """

    def __init__(self, db: Database, *, lock_timeout_ms: int = 2000) -> None:
        self.db = db
        self.lock_timeout = f"{int(lock_timeout_ms)}ms"

    def __repr__(self) -> str:
        return f"RateLimiter(db={self.db!r})"

    async def hit(
        self,
        key: str,
        limit: str | RateLimit | Sequence[str | RateLimit] = "100/minute",
        cost: int = 1,
        *,
        session: Session | None = None,
    ) -> RateLimitResult:
        """Count `cost` hits for `key` in every window of `limit`, if each has room; say which.

        With several limits ("10/second; 1000/hour") the hit counts in all or in none: a
        refusal by one window takes nothing from the others. With `session`, the hit is part
        of that session's transaction (committed or rolled back with it).
        """
        limits = parse_limits(limit)
        _check_key(key)
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise InvalidRateLimitError(
                f"A hit's cost must be a whole number >= 1 (got {cost!r:.20})."
            )
        smallest = min(limits, key=lambda lim: lim.quota)
        if cost > smallest.quota:
            raise InvalidRateLimitError(
                f"A hit costing {cost} can never pass the limit {smallest}; lower the cost."
            )
        seconds = [lim.seconds for lim in limits]
        quotas = [lim.quota for lim in limits]
        try:
            with translated_errors():
                if session is not None:
                    records = await self._hit_in_session(
                        session, len(limits) > 1, key, seconds, quotas, cost
                    )
                else:
                    # A count, not the caller's data: the caller's reads may stay on replicas.
                    with bookkeeping():
                        records = await self._hit(len(limits) > 1, key, seconds, quotas, cost)
        except Exception as exc:
            if sqlstate_of(exc) == _LOCK_NOT_AVAILABLE:
                raise DatabaseUnavailableError(
                    f"A rate-limit check waited longer than {self.lock_timeout} for its counter "
                    "(a transaction holds it); try again, and look for long transactions that "
                    "hit rate limits through a session."
                ) from exc
            raise
        windows = tuple(_usage(r) for r in records)
        allowed = all(r[8] for r in records)
        if not allowed:
            # A refused hit moved no count (see _hit); report the windows as they stand.
            windows = tuple(_usage(r, hits=r[3] - (cost if r[8] else 0)) for r in records)
        return RateLimitResult(allowed=allowed, key=key, cost=cost, windows=windows)

    async def _hit(
        self, several: bool, key: str, seconds: list[int], quotas: list[int], cost: int
    ) -> Sequence[Any]:
        args = (key, seconds, quotas, cost, self.lock_timeout)
        lane = self.db.read_lane
        if lane is not None and not several:
            # The hot path: one statement, no transaction, no reset (it leaves no session
            # state: its lock_timeout is local to the statement's own transaction).
            return await lane.fetch(HIT_SQL, args, retry=False)
        async with self.db.engine.connect() as conn:
            records = await _execute(conn, HIT_SQL, args)
            # All windows or none: a window that refused rolls back the others' counts.
            if all(r[8] for r in records):
                await conn.commit()
            else:
                await conn.rollback()
                await conn.exec_driver_sql(_REFUSED, _refusals(key, records))
                await conn.commit()
            return records

    async def _hit_in_session(
        self,
        session: Session,
        several: bool,
        key: str,
        seconds: list[int],
        quotas: list[int],
        cost: int,
    ) -> Sequence[Any]:
        args = (key, seconds, quotas, cost)
        if not several:
            return await _execute(await session.connection(), _HIT_IN_SESSION, args)
        savepoint = await session.begin_nested()
        records = await _execute(await session.connection(), _HIT_IN_SESSION, args)
        if all(r[8] for r in records):
            await savepoint.commit()
        else:
            await savepoint.rollback()
            await (await session.connection()).exec_driver_sql(_REFUSED, _refusals(key, records))
        return records

    async def usage(self, key: str) -> list[WindowUsage]:
        """The key's current windows (those not yet ended), shortest first."""
        _check_key(key)
        return [_usage(r) for r in await self._read(_USAGE, (key,))]

    async def exceeded(self, *, within_seconds: int = 0, limit: int = 100) -> list[WindowUsage]:
        """Windows that refused hits: current ones, or those ended in the last `within_seconds`.

        Most refusals first, at most `limit`.
        """
        return [_usage(r) for r in await self._read(_EXCEEDED, (int(within_seconds), int(limit)))]

    async def cleanup(self, *, older_than_seconds: int = 0, batch_size: int = 5000) -> int:
        """Delete windows that ended more than `older_than_seconds` ago, in batches; how many.

        A window that has ended is never counted in again (a new hit opens the next window),
        so deleting it loses no live count.
        """
        if batch_size < 1:
            raise InvalidRateLimitError("cleanup's batch_size must be at least 1.")
        deleted = 0
        while True:
            with translated_errors():
                async with self.db.engine.begin() as conn:
                    result = await conn.exec_driver_sql(
                        _CLEANUP, (int(older_than_seconds), batch_size)
                    )
            deleted += result.rowcount
            if result.rowcount < batch_size:
                return deleted

    async def _read(self, sql: str, args: tuple[Any, ...]) -> Sequence[Any]:
        with translated_errors():
            lane = self.db.read_lane
            if lane is not None:
                return await lane.fetch(sql, args)
            async with self.db.engine.connect() as conn:
                return await _execute(conn, sql, args)


async def _execute(conn: AsyncConnection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    result = await conn.exec_driver_sql(sql, args)
    return [tuple(row) for row in result]


def _refusals(key: str, records: Sequence[Any]) -> tuple[Any, ...]:
    refused = [r for r in records if not r[8]]
    return (key, [r[1] for r in refused], [r[5] for r in refused])


def _usage(record: Sequence[Any], hits: int | None = None) -> WindowUsage:
    return WindowUsage(
        key=record[0],
        seconds=record[1],
        quota=record[2],
        hits=record[3] if hits is None else hits,
        refused=record[4],
        window_start=record[5],
        reset_at=record[6],
        checked_at=record[7],
    )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRateLimitError(
            f"A rate-limit key must be printable text of 1 to {MAX_KEY_LENGTH} characters, "
            "such as 'tenant:<id>:search'."
        )
