"""The fault harness itself: a primary and a PgBouncer that start, stop, pause and resume."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from fault_harness import PgBouncer, Primary

from pgstack.db.admin import asyncpg_dsn

pytestmark = pytest.mark.faults


async def test_primary_and_pgbouncer_answer_and_pause(
    primary: Primary, pgbouncer: PgBouncer
) -> None:
    # proves: C8
    conn = await asyncpg.connect(asyncpg_dsn(pgbouncer.url), statement_cache_size=0)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        primary.pause()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 2", timeout=0.5)
        primary.resume()
    finally:
        conn.terminate()
    conn = await asyncpg.connect(asyncpg_dsn(primary.url))
    try:
        assert await conn.fetchval("SELECT 3") == 3
    finally:
        await conn.close()
    await asyncio.to_thread(primary.restart, "immediate")
    conn = await asyncpg.connect(asyncpg_dsn(primary.url))
    try:
        assert await conn.fetchval("SELECT 4") == 4
    finally:
        await conn.close()
