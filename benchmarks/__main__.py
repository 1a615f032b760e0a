"""`uv run python -m benchmarks`: W1-W13 for pgstack and its peers, as a markdown table.

Each workload runs every contender once to warm up, then in interleaved rounds (contender A,
B, C, D, then again), so drift on a shared machine hits everyone alike. The table gives the
median and minimum ops/s over the rounds, the client's CPU use (process CPU time over wall
time: 100 % is one core busy) and the median's ratio to raw asyncpg in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from sqlalchemy.engine import URL, make_url

from benchmarks.contenders import (
    CONTENDERS,
    TOKEN_ACCOUNT,
    TOKEN_PROVIDER,
    DataSet,
    Pgstack,
    RawAsyncpg,
)
from benchmarks.models import BULK, INSERTS, ITEMS, UPSERTS, PgBase, migrate
from pgstack import Database, Repository, Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.embedded import EmbeddedPostgres

CONCURRENCY = 16


@dataclass(frozen=True)
class Workload:
    """One row group of the table."""

    key: str
    title: str
    unit: str
    concurrent: bool
    target: float


WORKLOADS = (
    Workload("w1", "W1 get by primary key, one session per lookup", "lookups/s", True, 0.9),
    Workload("w2", "W2 insert one row, own transaction", "rows/s", True, 0.5),
    Workload("w3", "W3 insert {bulk:,} rows in one call (vs COPY)", "rows/s", False, 0.9),
    Workload("w4", "W4 page of 50 at offset 1,000 + total count", "pages/s", True, 0.95),
    Workload(
        "w4e", "W4e page of 50 at offset 1,000 + estimated total (auto)", "pages/s", True, 0.95
    ),
    Workload(
        "w4p", "W4p page of 50 at offset 1,000 + total count, plain rows", "pages/s", True, 0.95
    ),
    Workload("w5", "W5 upsert {upsert:,} rows, half new", "rows/s", False, 0.9),
    Workload("w6", "W6 atomic counter INSERT ... ON CONFLICT ... RETURNING", "ops/s", True, 0.6),
    Workload("w7", "W7 keyset page of 50 (page_after)", "pages/s", True, 0.8),
    Workload(
        "w7p", "W7p keyset page of 50, plain rows (page_after(plain=True))", "pages/s", True, 0.8
    ),
    Workload("w8", "W8 get_valid_token hot path (vs raw PK read)", "ops/s", True, 0.5),
    Workload("w9", "W9 session-token check (user_for_session)", "checks/s", True, 0.8),
    Workload("w10", "W10 API-key check (api_keys.verify)", "checks/s", True, 0.8),
    Workload("w11", "W11 login, right password (argon2 at its cheapest)", "logins/s", True, 0.5),
    Workload(
        "w12", "W12 tenant-scoped get under RLS (vs unprotected PK read)", "lookups/s", True, 0.6
    ),
    Workload(
        "w13", "W13 rate-limit check RateLimiter.hit, 100 keys (same statement)", "ops/s", True, 0.8
    ),
)
METHODS = {
    "w1": "w1_get",
    "w2": "w2_insert",
    "w3": "w3_bulk",
    "w4": "w4_page",
    "w4e": "w4e_page_estimated",
    "w4p": "w4p_page_plain",
    "w5": "w5_upsert",
    "w6": "w6_counter",
    "w7": "w7_keyset",
    "w7p": "w7p_keyset_plain",
    "w8": "w8_token",
    "w9": "w9_session",
    "w10": "w10_api_key",
    "w11": "w11_login",
    "w12": "w12_tenant_read",
    "w13": "w13_ratelimit",
}
IDENTITY_WORKLOADS = {"w9", "w10", "w11"}


@dataclass
class Sample:
    ops_per_s: float
    cpu_percent: float


async def timed(
    op: Callable[..., Awaitable[int]],
    concurrent: bool,
    seconds: float,
    batch: Callable[[], list[dict[str, Any]]] | None = None,
) -> Sample:
    """Run `op` for about `seconds` on 16 tasks, or (bulk) once on a batch built beforehand."""
    done = 0
    rows = batch() if batch is not None else None  # outside the clock: the same for everyone
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    deadline = start_wall + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            # Not `done += await op()`: that reads `done` before the await and loses the
            # other tasks' counts in between.
            count = await op()
            done += count

    if concurrent:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    else:
        done = await op(rows)  # a bulk call is one long operation: time exactly one
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    return Sample(done / wall, 100.0 * cpu / wall)


async def prepare(url: URL, rows: int, data: DataSet) -> None:
    """Migrate, create the bench_* tables afresh and fill them (COPY; outside any timing)."""
    await migrate(url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
        await db.connect()
        try:
            async with db.engine.begin() as sa_conn:
                await sa_conn.run_sync(PgBase.metadata.drop_all)
                await sa_conn.run_sync(PgBase.metadata.create_all)
        finally:
            await db.disconnect()
        for table, n, ids in ((ITEMS, rows, data.ids), (UPSERTS, rows, data.upsert_ids)):
            records = data.new_rows(n)
            ids.extend(r["id"] for r in records)
            await conn.copy_records_to_table(
                table,
                records=[(r["id"], r["name"], r["qty"], r["note"], 1) for r in records],
                columns=["id", "name", "qty", "note", "version"],
            )
        # A few soft-deleted rows, so reads that must hide them have something to hide.
        await conn.execute(
            f"UPDATE {ITEMS} SET deleted_at = now() WHERE id IN "
            f"(SELECT id FROM {ITEMS} ORDER BY id DESC LIMIT 50)"
        )
        deleted = {
            r["id"]
            for r in await conn.fetch(f"SELECT id FROM {ITEMS} WHERE deleted_at IS NOT NULL")
        }
        data.ids[:] = [i for i in data.ids if i not in deleted]
        await conn.execute(f"VACUUM ANALYZE {ITEMS}, {UPSERTS}")
    finally:
        await conn.close()


async def keyset_points(url: URL, data: DataSet) -> None:
    """Cursors (pgstack) and the matching last ids (others) for keyset pages across the table."""
    db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
    await db.connect()
    try:
        from benchmarks.models import PgItem

        cursor = None
        async with db.session() as s:
            for page_no in range(40):
                page = await Repository(s, PgItem).page_after(cursor=cursor, sort="id", limit=50)
                cursor = page.next_cursor
                assert cursor is not None
                if page_no % 2:
                    data.keyset_cursors.append(cursor)
                    data.keyset_ids.append(page.items[-1].id)
    finally:
        await db.disconnect()


async def prepare_token(url: URL, data: DataSet) -> None:
    """The vault's tables and one token valid for hours (so W8 measures the read path)."""
    from pgstack.crypto import configure_encryption, generate_key
    from pgstack.tokens import OAuthToken, TokenVault

    configure_encryption(generate_key("bench"))
    db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
    await db.connect()
    try:
        vault = TokenVault(db)  # its tables are the migrations'; `save` replaces the token
        await vault.save(TOKEN_PROVIDER, TOKEN_ACCOUNT, "access", "refresh", expires_in=6 * 3600)
        async with db.session() as s:
            token = await Repository(s, OAuthToken).get_by(
                provider=TOKEN_PROVIDER, account=TOKEN_ACCOUNT
            )
            data.token_id = token.id
    finally:
        await db.disconnect()


async def prepare_ratelimit(url: URL) -> None:
    """The rate-limit table (the migrations'), empty (W13 counts into it)."""
    from pgstack.tenancy.ratelimit import RateLimitWindow

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f"TRUNCATE {RateLimitWindow.__tablename__}")
    finally:
        await conn.close()


async def prepare_identity(url: URL, data: DataSet) -> None:
    """The identity tables, users to sign in, a live session token and an API key (W9-W11)."""
    from benchmarks.contenders import LOGIN_PASSWORD, _login_config
    from pgstack.identity import Identity

    db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
    await db.connect()
    try:
        # The tables are the migrations'; accounts of an earlier run on the same database
        # stay, so this run's have addresses of their own.
        run_id = uuid.uuid4().hex[:8]
        identity = Identity(db, _login_config())
        emails: asyncio.Queue[str] = asyncio.Queue()
        for n in range(CONCURRENCY):
            email = f"bench{n}-{run_id}@example.com"
            user = await identity.users.create(email, LOGIN_PASSWORD)
            emails.put_nowait(email)
        data.login_emails = emails
        data.session_token = (await identity.auth.login(email, LOGIN_PASSWORD)).token
        issued = await identity.api_keys.create(user.id, "bench", scopes=["items:read"])
        await identity.api_keys.verify(issued.key)  # its first use is written; then reads
        data.api_key = issued.key
    finally:
        await db.disconnect()


async def reset_bulk(url: URL) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f"TRUNCATE {BULK}, {INSERTS}")
    finally:
        await conn.close()


def tokens_available() -> bool:
    try:
        import pgstack.tokens  # noqa: F401
    except ImportError:
        return False
    return True


async def run(args: argparse.Namespace, url: URL) -> str:
    quick = args.quick
    rows = 5_000 if quick else 20_000
    data = DataSet(
        ids=[],
        upsert_ids=[],
        bulk_rows=20_000 if quick else 100_000,
        upsert_rows=2_000 if quick else 10_000,
    )
    await prepare(url, rows, data)
    await keyset_points(url, data)
    if "w8" in args.workloads and tokens_available():
        await prepare_token(url, data)
    if "w12" in args.workloads:
        from benchmarks.tenant_rls import prepare_tenant_rls

        await prepare_tenant_rls(url, rows, data)
    if "w13" in args.workloads:
        await prepare_ratelimit(url)
    if IDENTITY_WORKLOADS & set(args.workloads):
        await prepare_identity(url, data)
    batches: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "w3": lambda: data.new_rows(data.bulk_rows),
        "w5": data.upsert_batch,
    }
    seconds, rounds = args.seconds, args.rounds
    selected = [w for w in WORKLOADS if w.key in args.workloads]
    chosen = [c for c in CONTENDERS if c.name in args.contenders or c is RawAsyncpg]
    contenders = [c(url, data) for c in chosen]
    for contender in contenders:
        try:
            await contender.start()
        except Exception as exc:  # a peer that will not start is reported, not fatal
            print(f"{contender.name} did not start: {exc!r}", file=sys.stderr)
            contenders.remove(contender)
    lines = [
        "| workload | contender | median | min | client CPU | ratio to raw asyncpg | target |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    try:
        for workload in selected:
            title = workload.title.format(bulk=data.bulk_rows, upsert=data.upsert_rows)
            if workload.key == "w8" and data.token_id is None:
                lines.append(
                    f"| {title} | pgstack | — | — | — | not available yet: pgstack.tokens "
                    f"is not in this tree | ≥ {workload.target}x |"
                )
                continue
            method = METHODS[workload.key]
            ops = [(c, getattr(c, method, None)) for c in contenders]
            samples: dict[str, list[Sample]] = {c.name: [] for c, _ in ops}
            errors: dict[str, str] = {}
            # A bulk round is one call of ~0.1 s, which a scheduling hiccup moves by 10 %:
            # three times as many of them keep the median steady.
            count = rounds if workload.concurrent else 3 * rounds
            for round_no in range(count + 1):  # round 0 is the warm-up
                for contender, op in ops:
                    if op is None or contender.name in errors:
                        continue
                    if not workload.concurrent:
                        await reset_bulk(url)
                    try:
                        sample = await timed(
                            op, workload.concurrent, seconds, batches.get(workload.key)
                        )
                    except Exception as exc:
                        errors[contender.name] = f"failed: {type(exc).__name__}: {exc}"[:160]
                        continue
                    if round_no:
                        samples[contender.name].append(sample)
                print(f"  {workload.key} round {round_no} done", file=sys.stderr)
            raw = samples.get(RawAsyncpg.name) or []
            raw_median = statistics.median(s.ops_per_s for s in raw) if raw else None
            for contender, op in ops:
                got = samples[contender.name]
                if op is None:
                    lines.append(f"| {title} | {contender.name} | — | — | — | not offered | |")
                    continue
                if contender.name in errors:
                    lines.append(
                        f"| {title} | {contender.name} | — | — | — | "
                        f"{errors[contender.name].replace('|', '/')} | |"
                    )
                    continue
                median = statistics.median(s.ops_per_s for s in got)
                low = min(s.ops_per_s for s in got)
                cpu = statistics.median(s.cpu_percent for s in got)
                ratio = f"{median / raw_median:.2f}x" if raw_median else "—"
                target = f"≥ {workload.target}x" if isinstance(contender, Pgstack) else ""
                lines.append(
                    f"| {title} | {contender.name} | {median:,.0f} {workload.unit} | "
                    f"{low:,.0f} | {cpu:.0f} % | {ratio} | {target} |"
                )
    finally:
        for contender in contenders:
            await contender.stop()
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for name in ("pgstack", "sqlalchemy", "asyncpg", "uvloop", "advanced-alchemy"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


async def server_version(url: URL) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def main() -> None:
    names = [c.name for c in CONTENDERS]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--dsn", help="use this PostgreSQL (its tables bench_* are replaced)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: smaller data, and 1 s runs unless --seconds says otherwise",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(w.key for w in WORKLOADS),
        help="comma-separated, e.g. w1,w4",
    )
    parser.add_argument(
        "--contenders", default=",".join(names), help=f"comma-separated from: {', '.join(names)}"
    )
    parser.add_argument(
        "--seconds", type=float, help="length of one timed run (default 2, with --quick 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--data-dir", help="embedded server folder (default: a temp folder)")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args()
    if args.seconds is None:  # --quick shortens runs only where --seconds does not say
        args.seconds = 1.0 if args.quick else 2.0
    # Cursors only need to outlive this process; a fixed key keeps the log quiet.
    os.environ.setdefault("PGSTACK_CURSOR_SECRET", "pgstack benchmarks")
    args.workloads = [w.strip().lower() for w in args.workloads.split(",")]
    args.contenders = [c.strip() for c in args.contenders.split(",")]

    load_before = os.getloadavg()[0]
    embedded = None
    with tempfile.TemporaryDirectory(prefix="pgstack-bench-") as tmp:
        if args.dsn:
            url = make_url(args.dsn).set(drivername="postgresql+asyncpg")
        else:
            folder = Path(args.data_dir) if args.data_dir else Path(tmp) / "pgdata"
            embedded = EmbeddedPostgres(folder, durable=False)
            url = embedded.start()
        try:
            started = time.perf_counter()
            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            with runner:
                server = runner.run(server_version(url))
                table = runner.run(run(args, url))
            elapsed = time.perf_counter() - started
        finally:
            if embedded is not None:
                embedded.stop()
    load = os.getloadavg()
    header = (
        f"PostgreSQL {server}{' (embedded, durability off)' if embedded else ''}; {versions()}; "
        f"{os.cpu_count()} CPUs; load average {load_before:.2f} before, "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} (1/5/15 min) after; "
        f"pool 10, {CONCURRENCY} tasks; {args.seconds:g} s runs, {args.rounds} rounds; "
        f"{'quick' if args.quick else 'full'} run in {elapsed:.0f} s"
    )
    out = f"{header}\n\n{table}\n"
    print(out)
    if args.output:
        Path(args.output).write_text(out)


if __name__ == "__main__":
    main()
