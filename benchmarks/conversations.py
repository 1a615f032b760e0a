"""W15: message appends per second, `Conversations.append` against raw asyncpg sending the same.

    uv run python -m benchmarks.conversations [--dsn URL] [--seconds 2] [--rounds 3]

A database of its own (`pgstack_bench_conversations`, made afresh and dropped) is migrated to
pgstack's head; 16 tasks append messages for the tenant of a `tenant_context`. Raw asyncpg
sends the very statement pgstack sends (one call of `pgstack_conversation_append`, which
sets the tenant itself; the SQL text is taken from pgstack, as pgstack's read lane sends it)
on an asyncpg pool of the same size. A third line, for reference, is raw asyncpg doing the
append the way it is written by hand without that function: a transaction, `set_config` of
the tenant, a data-modifying CTE, COMMIT. Two shapes: each task its own session, and all 16
tasks appending to one session (the session row's lock orders them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import uvloop
from sqlalchemy.engine import URL, make_url

from pgstack import Database, Settings
from pgstack.conversations import Conversations
from pgstack.conversations.service import _APPEND
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.db.tenant import scoped_read
from pgstack.migrations.api import upgrade
from pgstack.orm import tenant_context

TASKS = 16
POOL = 10
DATABASE = "pgstack_bench_conversations"
IDLE = timedelta(hours=24)

# The append written by hand without pgstack_conversation_append (the reference line).
CTE_SQL = (
    "WITH bumped AS ("
    " UPDATE conversation_sessions SET message_count = message_count + 1,"
    " token_count = token_count + $4, last_activity_at = now(), expires_at = now() + $7"
    " WHERE id = $1 AND user_id = $2 AND tenant_id = $3 AND status = 'active'"
    " AND (expires_at IS NULL OR expires_at > now())"
    " RETURNING id, tenant_id, message_count) "
    "INSERT INTO conversation_messages "
    "(session_id, tenant_id, seq, role, content, tokens, tool_calls) "
    "SELECT id, tenant_id, message_count, $5, $6, $4, NULL FROM bumped "
    "RETURNING session_id, seq, role, content, tokens, tool_calls, created_at"
)
SET_TENANT = "SELECT set_config('pgstack.tenant_id', $1, true)"
CONTENT = "Where is my refund? I ordered on Monday and have heard nothing since."


async def _admin(url: URL, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _prepare(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    """A user and their tenant in the migrated database."""
    from pgstack.identity import Identity
    from pgstack.tenancy import Tenancy

    user = await Identity(db).users.create("bench@example.com", "violet Harbour 42 lanterns drift")
    tenant = await Tenancy(db).tenants.create("bench", "bench", owner_id=user.id)
    return tenant.id, user.id


async def _timed(op: Callable[[int], Awaitable[None]], seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(n: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op(n)
            done += 1

    await asyncio.gather(*(worker(n) for n in range(TASKS)))
    return done / (time.perf_counter() - started)


async def run(url: URL, seconds: float, rounds: int) -> list[str]:
    db = Database(
        Settings(
            database_url=url.render_as_string(hide_password=False),
            database_pool_size=POOL,
            database_max_overflow=0,
        )
    )
    await db.connect()
    tenant, user = await _prepare(db)
    pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=POOL, max_size=POOL)
    assert pool is not None
    conversations = Conversations(db, idle_timeout=IDLE)
    assert db.read_lane is not None, "the benchmark measures the read lane's append path"
    lines = [
        "| workload | contender | median | min | ratio to raw asyncpg | target |",
        "|---|---|---:|---:|---:|---:|",
    ]
    try:
        with tenant_context(tenant):
            own = [(await conversations.start(user, "bench")).id for _ in range(TASKS)]
            shared = (await conversations.start(user, "bench")).id
            # The text pgstack's read lane sends for an append in this tenant, and its tail
            # argument (the tenant): raw asyncpg sends the same.
            same_sql, with_tenant, _ = scoped_read(_APPEND, [None] * 9)
            tail = with_tenant[9:]

        for shape, sessions in (("16 sessions", own), ("one session", [shared] * TASKS)):

            async def pgstack_append(n: int, sessions: list[uuid.UUID] = sessions) -> None:
                with tenant_context(tenant):
                    await conversations.append(sessions[n], user, "user", CONTENT, tokens=12)

            async def raw_append(n: int, sessions: list[uuid.UUID] = sessions) -> None:
                async with pool.acquire() as conn:
                    row = await conn.fetchrow(
                        same_sql,
                        sessions[n],
                        user,
                        tenant,
                        "user",
                        CONTENT,
                        12,
                        None,
                        IDLE,
                        None,
                        *tail,
                    )
                    assert row is not None

            async def raw_by_hand(n: int, sessions: list[uuid.UUID] = sessions) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(SET_TENANT, str(tenant))
                    row = await conn.fetchrow(
                        CTE_SQL, sessions[n], user, tenant, 12, "user", CONTENT, IDLE
                    )
                    assert row is not None

            contenders = {
                "raw asyncpg": raw_append,
                "pgstack": pgstack_append,
                "raw asyncpg, BEGIN + set_config + CTE + COMMIT (reference)": raw_by_hand,
            }
            results: dict[str, list[float]] = {name: [] for name in contenders}
            for round_no in range(rounds + 1):  # round 0 warms up
                order = list(contenders.items())
                shift = round_no % len(order)  # each contender goes first in turn
                for name, op in order[shift:] + order[:shift]:
                    rate = await _timed(op, seconds)
                    if round_no:
                        results[name].append(rate)
            raw = statistics.median(results["raw asyncpg"])
            for name, rates in results.items():
                median = statistics.median(rates)
                target = "≥ 0.6x" if name == "pgstack" else ""
                lines.append(
                    f"| W15 append a message, {TASKS} tasks, {shape} | {name} | "
                    f"{median:,.0f} appends/s | {min(rates):,.0f} | {median / raw:.2f}x | "
                    f"{target} |"
                )
        # The totals stayed exact under all of it.
        check = await pool.fetch(
            "SELECT s.message_count = (SELECT count(*) FROM conversation_messages m "
            "WHERE m.session_id = s.id) AS exact FROM conversation_sessions s"
        )
        assert all(r["exact"] for r in check), "message totals drifted"
    finally:
        await pool.close()
        await db.disconnect()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conversations", description=__doc__)
    parser.add_argument("--dsn", help="a PostgreSQL server (a database of its own is made)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up")
    args = parser.parse_args()
    embedded = None
    with tempfile.TemporaryDirectory(prefix="pgstack-bench-") as tmp:
        if args.dsn:
            server = make_url(args.dsn).set(drivername="postgresql+asyncpg")
        else:
            embedded = EmbeddedPostgres(Path(tmp) / "pgdata", durable=False)
            server = embedded.start()
        url = server.set(database=DATABASE)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(
                    _admin(
                        server,
                        f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
                        f'CREATE DATABASE "{DATABASE}"',
                    )
                )
                upgrade(url)
                lines = runner.run(run(url, args.seconds, args.rounds))
                runner.run(_admin(server, f'DROP DATABASE "{DATABASE}" WITH (FORCE)'))
        finally:
            if embedded is not None:
                embedded.stop()
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; "
        f"pool {POOL}, {TASKS} tasks; {args.seconds:g} s runs, {args.rounds} rounds"
        f"{'; embedded, durability off' if embedded else ''}\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
