"""W14: audited single-row inserts against unaudited ones, in the same run, on one server.

    uv run python -m benchmarks.audit_insert --url postgresql://postgres@127.0.0.1:5432/postgres

Makes a scratch database, migrates it (pgstack_0007_audit included), and two identical
tables, one audited with `enable_audit`'s triggers. Each workload runs `--tasks` concurrent
tasks on an asyncpg pool, each inserting one row per transaction for `--seconds`:
- `one chain`: every entry in the global chain (the worst case: all writers serialize on
  the chain's advisory lock from the insert to the commit);
- `per tenant`: each task writes for a tenant of its own (one chain each);
- `bulk`: one transaction inserts `--bulk` rows in one statement (one chain), rows/s.
Prints ops/s for the plain table and the audited one and their ratio for each round, the
median ratio of each workload, and the load average before and after (the ratios mean
little on a machine busy with other work: quote them with it).

    uv run python -m benchmarks.audit_insert --floor

measures instead what a single-row transaction pays for less than a full entry, each
against plain inserts in the same round (one row per transaction, `--tasks` tasks): a
PL/pgSQL row trigger that does nothing; one that inserts a constant row into an unindexed,
unpartitioned table; the full entry (`enable_audit`'s trigger, per tenant); and one that
inserts a constant row into `audit_log` itself with the chain's triggers switched off (no
chain, no diff, no context: the partition routing and the indexes alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg

from pgstack.audit import audit_sql
from pgstack.migrations import upgrade

TABLE = "CREATE TABLE {name} (id uuid PRIMARY KEY, tenant_id uuid, title text NOT NULL)"


async def _rate(pool: asyncpg.Pool, table: str, tasks: int, seconds: float, tenants: bool) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    sql = f"INSERT INTO {table} (id, tenant_id, title) VALUES ($1, $2, 'a title')"

    async def work(tenant: uuid.UUID | None) -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.perf_counter() < stop:
                await conn.execute(sql, uuid.uuid4(), tenant)
                done += 1

    await asyncio.gather(*(work(uuid.uuid4() if tenants else None) for _ in range(tasks)))
    return done / seconds


# The floor: triggers that do less than an entry (see the docstring).
_FLOOR = (
    (
        "trigger that does nothing",
        "bench_noop",
        "BEGIN RETURN NULL; END",
    ),
    (
        "trigger: constant row into an unindexed, unpartitioned table",
        "bench_sink",
        "BEGIN INSERT INTO bench_sink_rows (action) VALUES ('x'); RETURN NULL; END",
    ),
    (
        "trigger: constant row into audit_log, chain triggers off",
        "bench_bare",
        "BEGIN INSERT INTO audit_log (action, seq, prev_hash, hash) VALUES ('x', 0, '', ''); "
        "RETURN NULL; END",
    ),
)


async def _floor(conn: asyncpg.Connection, pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    await conn.execute("CREATE TABLE bench_sink_rows (action text, at timestamptz DEFAULT now())")
    tables = []
    for label, name, body in _FLOOR:
        await conn.execute(TABLE.format(name=name))
        await conn.execute(
            f"CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$ {body} $$"
        )
        await conn.execute(
            f"CREATE TRIGGER {name} AFTER INSERT ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}_fn()"
        )
        tables.append((label, name, False))
    tables.insert(2, ("the full entry (enable_audit, per tenant)", "bench_audited", True))
    print("| what the trigger writes | plain ops/s | with the trigger | ratio |")
    print("|---|---|---|---|")
    medians = {}
    for label, name, tenants in tables:
        if name == "bench_bare":
            for trigger in ("audit_log_chain", "audit_log_head"):
                await conn.execute(f"ALTER TABLE audit_log DISABLE TRIGGER {trigger}")
        ratios = []
        for _ in range(args.rounds):
            plain = await _rate(pool, "bench_plain", args.tasks, args.seconds, tenants)
            other = await _rate(pool, name, args.tasks, args.seconds, tenants)
            ratios.append(other / plain)
            print(f"| {label} | {plain:,.0f} | {other:,.0f} | {other / plain:.2f}x |")
        medians[label] = statistics.median(ratios)
    for label, ratio in medians.items():
        print(f"median ratio, {label}: {ratio:.2f}x over {args.rounds} rounds")


async def _bulk_rate(pool: asyncpg.Pool, table: str, rows: int) -> float:
    sql = (
        f"INSERT INTO {table} (id, tenant_id, title) "
        "SELECT gen_random_uuid(), $1, 'a title' FROM generate_series(1, $2)"
    )
    async with pool.acquire() as conn, conn.transaction():
        started = time.perf_counter()
        await conn.execute(sql, uuid.uuid4(), rows)
        return rows / (time.perf_counter() - started)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


async def main(args: argparse.Namespace) -> None:
    url, tasks, seconds, rounds, bulk = args.url, args.tasks, args.seconds, args.rounds, args.bulk
    name = f"pgstack_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    target = url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, target)
        conn = await asyncpg.connect(target)
        for table in ("bench_plain", "bench_audited"):
            await conn.execute(TABLE.format(name=table))
        for statement in audit_sql("bench_audited"):
            await conn.execute(statement)
        pool = await asyncpg.create_pool(target, min_size=tasks, max_size=tasks)
        print(f"W14 audited single-row inserts: {tasks} tasks, {seconds:g} s per run")
        print(f"load average before: {_load()}")
        if args.floor:
            await _floor(conn, pool, args)
            await conn.close()
            await pool.close()
            print(f"load average after: {_load()}")
            return
        await conn.close()
        print("| workload | plain ops/s | audited ops/s | ratio |")
        print("|---|---|---|---|")
        medians = {}
        for label, tenants in (("one chain", False), ("per tenant", True)):
            ratios = []
            for _ in range(rounds):
                plain = await _rate(pool, "bench_plain", tasks, seconds, tenants)
                audited = await _rate(pool, "bench_audited", tasks, seconds, tenants)
                ratios.append(audited / plain)
                print(f"| {label} | {plain:,.0f} | {audited:,.0f} | {audited / plain:.2f}x |")
            medians[label] = statistics.median(ratios)
        ratios = []
        for _ in range(rounds):
            plain = await _bulk_rate(pool, "bench_plain", bulk)
            audited = await _bulk_rate(pool, "bench_audited", bulk)
            ratios.append(audited / plain)
            print(
                f"| bulk {bulk:,} rows | {plain:,.0f} rows/s | {audited:,.0f} rows/s "
                f"| {audited / plain:.2f}x |"
            )
        medians[f"bulk {bulk:,} rows"] = statistics.median(ratios)
        await pool.close()
        print(f"load average after: {_load()}")
        for label, ratio in medians.items():
            goal = "" if label.startswith("bulk") else " (target 0.7x)"
            print(f"median ratio, {label}: {ratio:.2f}x over {rounds} rounds{goal}")
    finally:
        admin = await asyncpg.connect(url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bulk", type=int, default=5000, help="rows in the bulk workload")
    parser.add_argument(
        "--floor", action="store_true", help="what less than an entry costs (see above)"
    )
    asyncio.run(main(parser.parse_args()))
