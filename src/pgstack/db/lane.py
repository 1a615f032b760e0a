"""The read lane: single statements outside any transaction, on pgstack's own asyncpg pool.

A read on a session that has begun no work needs no transaction: one statement is atomic and
sees one snapshot. Checking a connection out of SQLAlchemy's pool (through a greenlet) costs
more client CPU than such a read itself, so pgstack's fast reads and the token vault's hot
read run here instead:

- connections open on demand, up to `DATABASE_READ_POOL_SIZE` (default: the pool size; 0
  turns the lane off), with the engine's server settings (application name, statement
  timeout), TLS options and JSON codecs, and close after a minute unused;
- no reset query on release: the lane runs only pgstack's own single statements, which leave
  no session state behind (no SET, LISTEN, cursor or advisory lock);
- no ping on checkout: a statement that finds its connection dead runs once more on another
  (reads can be repeated), so a restarted server costs one failed attempt, not an error;
- the engine's statement listeners (query metrics, `pgstack.testing.record_statements`) see
  every statement; the `conn` they receive is a `LaneConnection` with `info` and `engine`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger("pgstack.db")

# Errors after which the connection is gone (the pool opens another on the next acquire).
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    OSError,
)

# Options SQLAlchemy's asyncpg adapter reads from the URL that asyncpg itself does not take.
_ADAPTER_OPTIONS = ("prepared_statement_name_func", "async_fallback")


class LaneConnection:
    """Stands for the connection in statement events of the read lane."""

    __slots__ = ("engine", "info")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.info: dict[str, Any] = {}


class _Adapted:
    """The shape SQLAlchemy's codec setup expects: a wrapper holding the driver connection."""

    __slots__ = ("_connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection


async def _keep(connection: asyncpg.Connection) -> None:
    """Release without a reset query (asyncpg still rolls back a transaction left open)."""


class ReadLane:
    """pgstack's own asyncpg pool for single statements run outside a transaction."""

    def __init__(self, pool: asyncpg.Pool, engine: AsyncEngine, size: int, timeout: float):
        self.pool = pool
        self.size = size
        self._engine = engine.sync_engine
        self._timeout = timeout

    @classmethod
    async def open(
        cls, engine: AsyncEngine, connect_args: dict[str, Any], size: int, timeout: float
    ) -> ReadLane:
        """A lane to the engine's database; no connection opens until the first statement."""
        dialect: Any = engine.sync_engine.dialect
        _, options = dialect.create_connect_args(engine.sync_engine.url)
        for name in _ADAPTER_OPTIONS:
            options.pop(name, None)
        cache_size = options.pop("prepared_statement_cache_size", None)
        if cache_size is not None:
            options["statement_cache_size"] = cache_size
        options.update(connect_args)

        async def init(connection: asyncpg.Connection) -> None:
            # The engine's JSON codecs, so compiled result processors apply unchanged.
            await dialect.setup_asyncpg_json_codec(_Adapted(connection))
            await dialect.setup_asyncpg_jsonb_codec(_Adapted(connection))

        pool = asyncpg.create_pool(
            min_size=0,
            max_size=size,
            max_inactive_connection_lifetime=60.0,
            init=init,
            reset=_keep,
            **options,
        )
        await pool
        return cls(pool, engine, size, timeout)

    @property
    def echo(self) -> bool:
        """Whether SQL echo is on (then reads take the ordinary, logged path)."""
        return bool(self._engine.echo)

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """Run one statement and return its records; a dead connection gets one more try."""
        for attempt in (1, 2):
            async with self.pool.acquire(timeout=self._timeout) as connection:
                try:
                    return await self._run(connection, sql, args)
                except _CONNECTION_LOST:
                    if attempt == 2:
                        raise
                    logger.info("a read-lane connection was gone; running the read again")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, connection: Any, sql: str, args: Sequence[Any]) -> list[Any]:
        engine = self._engine
        if not engine._has_events:
            records: list[Any] = await connection.fetch(sql, *args)
            return records
        conn = LaneConnection(engine)
        dispatch = engine.dispatch
        dispatch.before_cursor_execute(conn, None, sql, args, None, False)
        records = await connection.fetch(sql, *args)
        dispatch.after_cursor_execute(conn, None, sql, args, None, False)
        return records

    def stats(self) -> dict[str, int]:
        """The lane's numbers in the shape of `Database.pool_stats()`."""
        total, idle = self.pool.get_size(), self.pool.get_idle_size()
        return {
            "size": self.size,
            "checked_in": idle,
            "checked_out": total - idle,
            "overflow": 0,
            "max_overflow": 0,
            "total": total,
        }

    async def close(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for statements in flight, then close every connection."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except TimeoutError:
            logger.warning("closing the read lane with statements still running")
            self.pool.terminate()
