"""H1/H2: requests/s, p50 and p99 over HTTP, pgstack's app against bare FastAPI + asyncpg.

    uv run python -m benchmarks.http [--seconds 10] [--rounds 3] [--connections 16] [--dsn ...]

Both servers run as processes of their own on loopback (uvicorn, one worker, uvloop), on the
same data, and a bounded load generator (a fixed number of connections, each sending its
next request when the previous answer is in) drives them in turn, round after round:

- **pgstack**: the app `pgstack serve` runs (`service_app`: every module router under `/v1`)
  with the two routes below as the application's own, written as pgstack's guides write
  them: `require_scopes(...)` (the API key check), a `SessionDep`/`TransactionDep` and a
  `Repository`.
- **bare FastAPI + asyncpg**: the same two routes by hand: an asyncpg pool, the key found
  by its prefix joined with its user, its SHA-256 compared, its scopes checked, the row read
  or inserted, a dict returned.

H1 is `GET /v1/items/{id}` (one row by primary key), H2 `POST /v1/items` (one row created and
returned). Neither side checks a rate limit unless `--rate-limited` is given: then pgstack
counts every request against the key's tier, as `pgstack serve` does by default. The table
gives each round's median requests/s over the rounds, p50 and p99 latency over all
requests, and the ratio of pgstack's requests/s to the bare app's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, cast

import asyncpg
import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel
from sqlalchemy import Table
from sqlalchemy.engine import URL, make_url

from benchmarks.models import INSERTS, ITEM_COLUMNS, ITEMS, PgBase, PgInsert, PgItem, migrate
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.web.deps import SessionDep, TransactionDep
from pgstack.web.identity import Principal, require_scopes

SERVERS = ("bare FastAPI + asyncpg", "pgstack")
ITEM_COUNT = 1_000


# -- the two apps -------------------------------------------------------------------------------
# Names in the routes' annotations live at module level: FastAPI resolves them there.


class NewItem(BaseModel):
    name: str
    qty: int


def pgstack_app() -> Any:
    """The app `pgstack serve` runs, with the benchmark's two routes added."""
    from pgstack import Repository
    from pgstack.web.modules import service_app

    router = APIRouter()

    def out(item: Any) -> dict[str, Any]:
        return {"id": str(item.id), "name": item.name, "qty": item.qty, "note": item.note}

    @router.get("/items/{item_id}")
    async def get_item(
        item_id: uuid.UUID,
        session: SessionDep,
        _: Annotated[Principal, Depends(require_scopes("items:read"))],
    ) -> dict[str, Any]:
        return out(await Repository(session, PgItem).get(item_id))

    @router.post("/items", status_code=201)
    async def create_item(
        body: NewItem,
        session: TransactionDep,
        _: Annotated[Principal, Depends(require_scopes("items:write"))],
    ) -> dict[str, Any]:
        return out(await Repository(session, PgInsert).create(name=body.name, qty=body.qty))

    return service_app(monitor_interval=None, routers=[router])


def bare_app() -> Any:
    """The same two routes on FastAPI and an asyncpg pool, by hand."""
    from contextlib import asynccontextmanager

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state["pool"] = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=10, max_size=10)
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)
    key_sql = (
        "SELECT k.key_hash, k.scopes, k.revoked_at, k.expires_at FROM api_keys k "
        "JOIN users u ON u.id = k.user_id "
        "WHERE k.prefix = $1 AND u.deleted_at IS NULL AND u.is_active"
    )

    async def check(authorization: str | None, scope: str) -> None:
        if not authorization or not authorization.startswith("Bearer pgs_"):
            raise HTTPException(401)
        key = authorization[len("Bearer ") :]
        row = await state["pool"].fetchrow(key_sql, key[4:12])
        digest = hashlib.sha256(key.encode()).hexdigest()
        if row is None or not hmac.compare_digest(digest, row["key_hash"]):
            raise HTTPException(401)
        if row["revoked_at"] is not None or scope not in row["scopes"]:
            raise HTTPException(403)

    def out(row: Any) -> dict[str, Any]:
        return {"id": str(row["id"]), "name": row["name"], "qty": row["qty"], "note": row["note"]}

    @app.get("/v1/items/{item_id}")
    async def get_item(
        item_id: uuid.UUID, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        await check(authorization, "items:read")
        row = await state["pool"].fetchrow(
            f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE id = $1 AND deleted_at IS NULL", item_id
        )
        if row is None:
            raise HTTPException(404)
        return out(row)

    @app.post("/v1/items", status_code=201)
    async def create_item(
        body: NewItem, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        await check(authorization, "items:write")
        row = await state["pool"].fetchrow(
            f"INSERT INTO {INSERTS} (id, name, qty, note, version) VALUES ($1, $2, $3, NULL, 1) "
            f"RETURNING {ITEM_COLUMNS}",
            uuid.uuid4(),
            body.name,
            body.qty,
        )
        return out(row)

    return app


# -- set-up, servers, load ----------------------------------------------------------------------


async def prepare(url: URL) -> tuple[str, list[uuid.UUID]]:
    """Tables, 1,000 items, a user and an API key with both scopes; the key and the ids."""
    from pgstack import Database, Repository, Settings
    from pgstack.identity import Identity, IdentityConfig

    await migrate(url)  # identity and the audit log its key writes to, as a user's database
    db = Database(Settings(database_url=url.render_as_string(hide_password=False)))
    await db.connect()
    try:
        bench_tables = [cast(Table, PgItem.__table__), cast(Table, PgInsert.__table__)]
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda c: PgBase.metadata.drop_all(c, tables=bench_tables))
            await conn.run_sync(lambda c: PgBase.metadata.create_all(c, tables=bench_tables))
        async with db.transaction() as s:
            items = await Repository(s, PgItem).create_many(
                [{"name": f"item {n}", "qty": n} for n in range(ITEM_COUNT)], returning=True
            )
        identity = Identity(db, IdentityConfig(argon2_memory_kib=8, argon2_time_cost=1))
        # Accounts of an earlier run on the same database stay: this run's has its own address.
        email = f"http-{uuid.uuid4().hex[:8]}@example.com"
        user = await identity.users.create(email, "violet Harbour 42 lanterns drift")
        issued = await identity.api_keys.create(
            user.id, "http", scopes=["items:read", "items:write"]
        )
        return issued.key, [item.id for item in items]
    finally:
        await db.disconnect()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(name: str, url: URL, limited: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "BENCH_DSN": asyncpg_dsn(url),
        "PGSTACK_CURSOR_SECRET": "pgstack benchmarks",
        # The bare app has no rate limit: by default neither has pgstack's key (the same
        # work on both sides). With --rate-limited the key's check runs at a limit no run
        # reaches (the default 6,000/minute answers 429 within a round).
        "PGSTACK_RATE_LIMIT_TIERS": '{"standard": "%s"}' % ("100000000/minute" if limited else ""),
    }
    factory = "pgstack_app" if name == "pgstack" else "bare_app"
    process = subprocess.Popen(  # noqa: S603 - this interpreter, uvicorn
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"benchmarks.http:{factory}",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/docs", timeout=1)
            return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the {name} server did not start")


async def load(
    base: str, workload: str, key: str, ids: list[uuid.UUID], seconds: float, connections: int
) -> tuple[float, list[float]]:
    """Requests/s and every request's latency (s), `connections` requests in flight at most."""
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                if workload == "h1":
                    r = await client.get(f"/v1/items/{random.choice(ids)}")  # noqa: S311
                    expected = 200
                else:
                    r = await client.post("/v1/items", json={"name": "new", "qty": 1})
                    expected = 201
                latencies.append(time.perf_counter() - start)
                if r.status_code != expected:
                    raise RuntimeError(f"{workload}: {r.status_code} {r.text[:200]}")

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - began
    return len(latencies) / wall, latencies


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__)
    parser.add_argument("--dsn", help="use this PostgreSQL (tables are replaced)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--connections", type=int, default=16, help="requests in flight")
    parser.add_argument("--workloads", default="h1,h2")
    parser.add_argument(
        "--rate-limited",
        action="store_true",
        help="pgstack checks the key's rate limit on every request (the bare app never does)",
    )
    args = parser.parse_args()
    targets = {"h1": 0.8, "h2": 0.6}
    titles = {"h1": "H1 GET one row by id, API key", "h2": "H2 POST create one row, API key"}
    with tempfile.TemporaryDirectory(prefix="pgstack-http-") as tmp:
        embedded = None
        if args.dsn:
            url = make_url(args.dsn).set(drivername="postgresql+asyncpg")
        else:
            embedded = EmbeddedPostgres(Path(tmp) / "pgdata", durable=False)
            url = embedded.start()
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            key, ids = asyncio.run(prepare(url))
            for name in SERVERS:
                servers[name] = start_server(name, url, args.rate_limited)
            lines = [
                "| workload | server | median req/s | min | p50 ms | p99 ms | ratio | target |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            for workload in [w.strip() for w in args.workloads.split(",")]:
                rates: dict[str, list[float]] = {n: [] for n in SERVERS}
                waits: dict[str, list[float]] = {n: [] for n in SERVERS}
                for round_no in range(args.rounds + 1):
                    for name in SERVERS:
                        seconds = 2.0 if round_no == 0 else args.seconds
                        rate, lat = asyncio.run(
                            load(servers[name][1], workload, key, ids, seconds, args.connections)
                        )
                        if round_no:
                            rates[name].append(rate)
                            waits[name].extend(lat)
                    print(f"  {workload} round {round_no} done", file=sys.stderr)
                bare = statistics.median(rates[SERVERS[0]])
                for name in SERVERS:
                    ordered = sorted(waits[name])
                    p50 = ordered[len(ordered) // 2] * 1000
                    p99 = ordered[int(len(ordered) * 0.99)] * 1000
                    median = statistics.median(rates[name])
                    target = f"≥ {targets[workload]}x" if name == "pgstack" else ""
                    lines.append(
                        f"| {titles[workload]} | {name} | {median:,.0f} | "
                        f"{min(rates[name]):,.0f} | {p50:.1f} | {p99:.1f} | "
                        f"{median / bare:.2f}x | {target} |"
                    )
            print(
                f"load average {os.getloadavg()[0]:.2f}; {args.connections} connections, "
                f"{args.seconds:g} s x {args.rounds} rounds; one uvicorn worker each; "
                f"pgstack's rate limit check {'on' if args.rate_limited else 'off'}\n"
            )
            print("\n".join(lines))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    main()
