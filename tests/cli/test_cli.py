"""The `pgstack` command line: every command, and its failure messages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.db.admin import asyncpg_dsn

runner = CliRunner()
PGSTACK = str(Path(sys.executable).with_name("pgstack"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def no_traceback(output: str) -> None:
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_db_health_pass_table_and_json(pgstack_database_url: URL) -> None:
    # proves: C5
    env = {"DATABASE_URL": raw(pgstack_database_url)}
    result = runner.invoke(app, ["db", "health"], env=env)
    assert result.exit_code == 0, result.output
    assert "database health: pass" in result.output
    assert "postgres:responseTime" in result.output

    result = runner.invoke(app, ["db", "health", "--json"], env=env)
    assert result.exit_code == 0
    body = json.loads(result.output)
    assert body["status"] == "pass"
    assert body["checks"]["postgres:responseTime"][0]["observedUnit"] == "ms"


def test_db_health_warn_exits_zero(pgstack_database_url: URL) -> None:
    # proves: C5
    env = {"DATABASE_URL": raw(pgstack_database_url), "PGSTACK_HEALTH_QUERY_WARN_MS": "0"}
    result = runner.invoke(app, ["db", "health", "--json"], env=env)
    assert result.exit_code == 0
    body = json.loads(result.output)
    assert body["status"] == "warn"
    assert body["checks"]["postgres:queryPerformance"][0]["status"] == "warn"


def test_db_health_fail_exits_one_without_leaking_the_password() -> None:
    # proves: C5, C1
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/appdb"
    result = runner.invoke(app, ["db", "health", "--json"], env={"DATABASE_URL": url})
    assert result.exit_code == 1
    body = json.loads(result.output)
    assert body["status"] == "fail"
    assert "appdb" in body["checks"]["postgres:connection"][0]["output"]
    assert "hunter2-secret" not in result.output

    table = runner.invoke(app, ["db", "health"], env={"DATABASE_URL": url})
    assert table.exit_code == 1
    assert "fail" in table.output


def test_db_info_shows_settings_without_secrets(pgstack_database_url: URL) -> None:
    # proves: C1, C2
    url = pgstack_database_url
    env = {"DATABASE_URL": raw(url), "DATABASE_POOL_SIZE": "7"}
    result = runner.invoke(app, ["db", "info"], env=env)
    assert result.exit_code == 0, result.output
    assert "server_version" in result.output
    assert "pool_size" in result.output and "7" in result.output
    if url.password:
        assert url.password not in result.output


def test_db_info_unreachable_is_one_line() -> None:
    # proves: C2
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/appdb"
    result = runner.invoke(app, ["db", "info"], env={"DATABASE_URL": url})
    assert result.exit_code == 1
    no_traceback(result.output)
    assert result.output.startswith("error: Cannot connect to PostgreSQL at 127.0.0.1")
    assert "hunter2-secret" not in result.output


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_POOL_SIZE": "abc"}, "DATABASE_POOL_SIZE"),
        ({"PGSTACK_ENV": "prod"}, "PGSTACK_ENV"),
        ({"DATABASE_URL": "mysql://u:hunter2-secret@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:hunter2-secret@h:port/db"}, "DATABASE_URL"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable(env: dict[str, str], named: str) -> None:
    # proves: C1
    result = runner.invoke(app, ["db", "info"], env=env)
    assert result.exit_code == 1
    no_traceback(result.output)
    assert named in result.output
    assert "hunter2-secret" not in result.output


def test_missing_database_is_a_clear_error(pgstack_server_url: URL) -> None:
    # proves: C2
    url = raw(pgstack_server_url.set(database="no_such_database_here"))
    result = runner.invoke(app, ["db", "info"], env={"DATABASE_URL": url})
    assert result.exit_code == 1
    no_traceback(result.output)
    assert "no_such_database_here" in result.output


async def _fetch(url: URL, query: str, *args: object) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def test_db_init_is_idempotent(pgstack_server_url: URL) -> None:
    # proves: G5
    import asyncio

    suffix = uuid.uuid4().hex[:8]
    database, role = f"pgstack_init_{suffix}", f"pgstack_app_{suffix}"
    app_url = pgstack_server_url.set(database=database, username=role, password="app-pw-secret")
    env = {"DATABASE_URL": raw(app_url)}
    admin = raw(pgstack_server_url)
    try:
        first = runner.invoke(app, ["db", "init", "--admin-url", admin], env=env)
        assert first.exit_code == 0, first.output
        assert f"database {database}: created" in first.output
        assert f"role {role}: created" in first.output
        assert "extension citext: created" in first.output
        assert "app-pw-secret" not in first.output

        second = runner.invoke(app, ["db", "init", "--admin-url", admin], env=env)
        assert second.exit_code == 0, second.output
        assert f"database {database}: exists" in second.output
        assert f"role {role}: exists" in second.output
        assert "extension citext: exists" in second.output

        in_db = pgstack_server_url.set(database=database)
        extensions = asyncio.run(
            _fetch(
                in_db,
                "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension "
                "WHERE extname IN ('citext', 'pgcrypto')",
            )
        )
        assert extensions is not None and "citext" in str(extensions)
        can_connect = asyncio.run(
            _fetch(
                pgstack_server_url,
                "SELECT has_database_privilege($1, $2, 'CONNECT')",
                role,
                database,
            )
        )
        assert can_connect is True
    finally:
        asyncio.run(_drop(pgstack_server_url, database, role))


async def _drop(url: URL, database: str, role: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await conn.close()


def test_db_init_unreachable_admin_is_one_line(pgstack_database_url: URL) -> None:
    # proves: G5
    admin = f"postgresql://postgres:admin-secret@127.0.0.1:{closed_port()}/postgres"
    result = runner.invoke(
        app, ["db", "init", "--admin-url", admin], env={"DATABASE_URL": raw(pgstack_database_url)}
    )
    assert result.exit_code == 1
    no_traceback(result.output)
    assert "admin-secret" not in result.output


def test_db_init_needs_a_target() -> None:
    # proves: G5
    result = runner.invoke(app, ["db", "init", "--admin-url", "postgresql://postgres@127.0.0.1/x"])
    assert result.exit_code == 1
    no_traceback(result.output)
    assert "DATABASE_URL" in result.output


# -- serve, as a real process --------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    # A busy test machine must not turn readiness into "warn" on latency alone.
    env.update({"PGSTACK_HEALTH_LATENCY_WARN_MS": "10000", "PGSTACK_HEALTH_QUERY_WARN_MS": "10000"})
    env.update(extra)
    return env


@pytest.fixture
def serve() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start(
    procs: list[subprocess.Popen[str]], env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[str], int]:
    port = closed_port()
    proc = subprocess.Popen(
        [PGSTACK, "serve", "--port", str(port)],
        env=_env(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs.append(proc)
    return proc, port


def _wait_ready(proc: subprocess.Popen[str], port: int, deadline_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    # After a graceful shutdown uvicorn re-raises SIGTERM, so the exit says how it ended.
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out
    return out


def test_serve_with_a_configured_database(
    serve: list[subprocess.Popen[str]], pgstack_database_url: URL, tmp_path: Path
) -> None:
    # proves: W1
    proc, port = _start(serve, {"DATABASE_URL": raw(pgstack_database_url)}, tmp_path)
    ready = _wait_ready(proc, port)
    assert ready.json()["status"] == "pass"
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    paths = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    assert "/auth/login" in paths and "/admin/tokens" in paths  # module routers are mounted
    # The token vault's admin routes manage credentials: no caller without the admin role.
    assert httpx.get(f"http://127.0.0.1:{port}/admin/tokens").status_code == 401
    out = _stop(proc, signal.SIGTERM)
    assert f"API docs at http://127.0.0.1:{port}/docs" in out
    assert "pgstack: database postgresql+asyncpg://" in out


def test_serve_unreachable_database_is_one_line(tmp_path: Path) -> None:
    # proves: W1, C2
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/appdb"
    result = subprocess.run(
        [PGSTACK, "serve", "--port", str(closed_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(
            {
                "DATABASE_URL": url,
                "DATABASE_CONNECT_ATTEMPTS": "2",
                "DATABASE_CONNECT_BACKOFF": "0.05",
            }
        ),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "error: Cannot connect to PostgreSQL at 127.0.0.1" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_serve_embedded_starts_then_reuses_its_data(
    serve: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    # proves: C4, W1
    proc, port = _start(serve, {}, tmp_path)
    assert _wait_ready(proc, port, 120).json()["status"] == "pass"
    out = _stop(proc)
    data = tmp_path / ".pgstack" / "pgdata"
    assert f"embedded PostgreSQL (created) with its data in {data}" in out
    assert "embedded PostgreSQL stopped" in out
    assert (data / "PG_VERSION").exists()
    assert not (data / "postmaster.pid").exists(), "the server was not stopped"

    proc, port = _start(serve, {}, tmp_path)
    assert _wait_ready(proc, port, 120).json()["status"] == "pass"
    out = _stop(proc, signal.SIGTERM)
    assert "embedded PostgreSQL (reused)" in out
    assert "embedded PostgreSQL stopped" in out
    assert not (data / "postmaster.pid").exists(), "SIGTERM left the server running"


@pytest.mark.parametrize("command", [["users", "list"], ["tokens", "list"]])
def test_commands_that_change_stored_data_need_a_configured_database(command: list[str]) -> None:
    # proves: C1
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DATABASE_")}
    result = runner.invoke(app, command, env={**unset, "DATABASE_URL": None})
    assert result.exit_code == 1
    assert "No database is configured: set DATABASE_URL" in result.output
