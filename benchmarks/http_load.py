"""HTTP load on a pgstack app, directly and through PgBouncer in transaction mode.

`uv run python -m benchmarks.http_load` starts everything itself, on loopback only: an
embedded PostgreSQL (durability off) in a temporary folder, a PgBouncer (Debian's) in front
of it, and the app under uvicorn (one process, uvloop), first connected directly, then with
`DATABASE_POOLER=pgbouncer-transaction` through PgBouncer. `wrk` drives a primary-key read
(`GET /bench/rows/{id}`) and an insert (`POST /bench/rows`) for a fixed time each, and the
table gives requests/s, p50 and p99 latency, and every answer that was not a 2xx.

The app is `pgstack.web.create_app` (what `pgstack serve` runs: lifespan, problem details,
pool) with two routes of its own: `serve`'s own writes hash a password first, which would
measure argon2, not the database path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from pgstack.db.admin import asyncpg_dsn
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.web import create_app
from pgstack.web.deps import SessionDep, TransactionDep

ROWS = 10_000
router = APIRouter()


@router.get("/bench/rows/{row_id}")
async def read_row(row_id: int, session: SessionDep) -> dict[str, object]:
    name = await session.scalar(text("SELECT name FROM bench_http WHERE id = :id"), {"id": row_id})
    return {"id": row_id, "name": name}


@router.post("/bench/rows", status_code=201)
async def write_row(session: TransactionDep) -> dict[str, object]:
    new_id = await session.scalar(text("INSERT INTO bench_http (name) VALUES ('w') RETURNING id"))
    return {"id": new_id}


def make_app() -> FastAPI:
    """The app uvicorn serves (settings from the environment)."""
    return create_app(monitor_interval=None, routers=[router])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS bench_http;"
            "CREATE TABLE bench_http (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " name text NOT NULL)"
        )
        await conn.copy_records_to_table(
            "bench_http", records=((f"row {i}",) for i in range(ROWS)), columns=["name"]
        )
    finally:
        await conn.close()


@contextmanager
def _pgbouncer(socket_dir: str, server_port: int, user: str | None, base: Path) -> Iterator[int]:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    port = _free_port()
    folder = base / "pgbouncer"
    folder.mkdir()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={socket_dir} port={server_port}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\npool_mode = transaction\n"
        "default_pool_size = 10\nmax_client_conn = 200\n"
        f"ignore_startup_parameters = extra_float_digits\nlogfile = {folder / 'log'}\n"
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0 and user is not None:  # PgBouncer refuses to run as root
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, user)
        command[1:1] = ["-u", user]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        _wait_for(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def _served(database_url: str, pooler: str) -> Iterator[int]:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATABASE_POOLER": pooler,
        "DATABASE_POOL_SIZE": "10",
        "DATABASE_MAX_OVERFLOW": "0",
        "PGSTACK_ENV": "development",
    }
    command = [sys.executable, "-m", "uvicorn", "benchmarks.http_load:make_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"]
    command += ["--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)  # noqa: S603
    try:
        _wait_for(port)
        yield port
    finally:
        process.terminate()
        process.wait(20)


WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(port: int, route: str, seconds: int, connections: int, base: Path) -> dict[str, float]:
    """Run wrk on one route; requests/s, p50/p99 in ms, and non-2xx answers plus errors."""
    script = base / "route.lua"
    if route == "write":
        script.write_text('wrk.method = "POST"\n')
        path = "/bench/rows"
    else:
        # Primary keys spread over the table, one per request.
        script.write_text(
            f'request = function() return wrk.format("GET", "/bench/rows/" .. '
            f"math.random(1, {ROWS})) end\n"
        )
        path = "/bench/rows/1"
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run(  # noqa: S603
        [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    latency = {m[0]: float(m[1]) * UNITS[m[2]] for m in WRK_LATENCY.findall(out)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(non2xx.group(1)) if non2xx else 0
    if errors:
        failed += sum(int(g) for g in errors.groups())
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": latency.get("50", 0.0),
        "p99": latency.get("99", 0.0),
        "errors": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per route and path")
    parser.add_argument("--connections", type=int, default=16, help="wrk's open connections")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    base = Path(tempfile.mkdtemp(prefix="pgstack-http-load-"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "pgdata", durable=False)
    url = server.start()
    try:
        asyncio.run(_prepare(asyncpg_dsn(url)))
        socket_dir, user = server.socket_dir, server._server.system_user
        direct = url.render_as_string(hide_password=False)
        rows = []
        with _pgbouncer(socket_dir, url.port or 5432, user, base) as bouncer_port:
            pooled = f"postgresql://postgres@127.0.0.1:{bouncer_port}/postgres"
            for label, database_url, pooler in (
                ("direct", direct, "none"),
                ("PgBouncer (transaction)", pooled, "pgbouncer-transaction"),
            ):
                with _served(database_url, pooler) as port:
                    for route in ("read", "write"):
                        _wrk(port, route, 2, args.connections, base)  # warm-up
                        figures = _wrk(port, route, args.seconds, args.connections, base)
                        rows.append((label, route, figures))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{args.connections} connections, {args.seconds} s per line, one uvicorn process, "
        "pool of 10 (PgBouncer: default_pool_size 10)\n"
    )
    print("| path | route | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for label, route, f in rows:
        what = "GET /bench/rows/{id}" if route == "read" else "POST /bench/rows"
        print(
            f"| {label} | {what} | {f['rps']:,.0f} | {f['p50']:.1f} | {f['p99']:.1f} | "
            f"{f['errors']:.0f} |"
        )


if __name__ == "__main__":
    main()
