"""Peak memory of writing rows from a generator: pgstack's create_many against raw COPY.

    uv run python -m benchmarks.stream_memory [--rows 1000000] [--dsn postgresql://...]

Each contender runs in a process of its own (peak RSS is per process), writing the same
rows, made one at a time by a generator, into an empty `bench_bulk`:

- raw asyncpg: `copy_records_to_table(records=<generator of tuples>)`;
- pgstack: `Repository(session, PgBulk).create_many(<generator of dicts>)` in a transaction
  (streamed in batches of `stream_batch_size`).

It prints rows/s and the growth of peak RSS over the process's RSS before the write.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import uvloop
from sqlalchemy import Table
from sqlalchemy.engine import URL, make_url

from benchmarks.models import BULK, PgBase, PgBulk
from pgstack import Database, Repository, Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.embedded import EmbeddedPostgres

CONTENDERS = ("raw asyncpg", "pgstack")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _dicts(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"id": uuid.uuid4(), "name": f"item {i}", "qty": i, "note": None}


async def _child(contender: str, url: URL, rows: int, batch: int | None) -> dict[str, float]:
    if contender == "raw asyncpg":
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            before = _peak_mb()
            start = time.perf_counter()
            records = ((r["id"], r["name"], r["qty"], r["note"], 1) for r in _dicts(rows))
            await conn.copy_records_to_table(
                BULK, records=records, columns=["id", "name", "qty", "note", "version"]
            )
            elapsed = time.perf_counter() - start
        finally:
            await conn.close()
    else:
        db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
        await db.connect()
        try:
            async with db.transaction() as s:  # opens the connection before measuring
                await Repository(s, PgBulk).count()
            before = _peak_mb()
            start = time.perf_counter()
            async with db.transaction() as s:
                repo = Repository(s, PgBulk)
                if batch:
                    repo.stream_batch_size = batch  # type: ignore[misc]
                written = await repo.create_many(_dicts(rows))
            elapsed = time.perf_counter() - start
            assert written == rows
        finally:
            await db.disconnect()
    return {"rows_per_s": rows / elapsed, "before_mb": before, "peak_mb": _peak_mb()}


async def _reset(url: URL) -> None:
    db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
    await db.connect()
    try:
        async with db.engine.begin() as conn:
            tables = [cast(Table, PgBulk.__table__)]
            await conn.run_sync(lambda c: PgBase.metadata.drop_all(c, tables=tables))
            await conn.run_sync(lambda c: PgBase.metadata.create_all(c, tables=tables))
    finally:
        await db.disconnect()


def _run_child(contender: str, url: URL, rows: int, batch: int | None) -> dict[str, float]:
    asyncio.run(_reset(url))
    out = subprocess.run(  # noqa: S603 - this interpreter, this module
        [
            sys.executable,
            "-m",
            "benchmarks.stream_memory",
            "--child",
            contender,
            "--dsn",
            url.render_as_string(hide_password=False),
            "--rows",
            str(rows),
            *(["--batch", str(batch)] if batch else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_memory", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dsn", help="use this PostgreSQL (its table bench_bulk is replaced)")
    parser.add_argument("--batch", type=int, help="pgstack's stream_batch_size (default: its own)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url = make_url(args.dsn).set(drivername="postgresql+asyncpg")
        result = uvloop.run(_child(args.child, url, args.rows, args.batch))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="pgstack-stream-") as tmp:
        embedded = None
        if args.dsn:
            url = make_url(args.dsn).set(drivername="postgresql+asyncpg")
        else:
            embedded = EmbeddedPostgres(Path(tmp) / "pgdata", durable=False)
            url = embedded.start()
        try:
            print("| contender | rows | rows/s | RSS before | peak RSS | growth |")
            print("|---|---:|---:|---:|---:|---:|")
            for contender in CONTENDERS:
                r = _run_child(contender, url, args.rows, args.batch)
                print(
                    f"| {contender} | {args.rows:,} | {r['rows_per_s']:,.0f} | "
                    f"{r['before_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
                    f"{r['peak_mb'] - r['before_mb']:.0f} MB |"
                )
        finally:
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    main()
