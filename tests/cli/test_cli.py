"""The `pgstack` command line: every command, and its failure messages."""

from __future__ import annotations

import json
import os
import signal
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

from .conftest import closed_port, one_line

runner = CliRunner()
PGSTACK = str(Path(sys.executable).with_name("pgstack"))


def raw(url: URL) -> str:
    return url.render_as_string(hide_password=False)


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
    one_line(result.output)
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
    one_line(result.output)
    assert named in result.output
    assert "hunter2-secret" not in result.output


def test_missing_database_is_a_clear_error(pgstack_server_url: URL) -> None:
    # proves: C2
    url = raw(pgstack_server_url.set(database="no_such_database_here"))
    result = runner.invoke(app, ["db", "info"], env={"DATABASE_URL": url})
    assert result.exit_code == 1
    one_line(result.output)
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
    one_line(result.output)
    assert "admin-secret" not in result.output


def test_db_init_needs_a_target() -> None:
    # proves: G5
    result = runner.invoke(app, ["db", "init", "--admin-url", "postgresql://postgres@127.0.0.1/x"])
    assert result.exit_code == 1
    one_line(result.output)
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
    # proves: W1, O6
    proc, port = _start(serve, {"DATABASE_URL": raw(pgstack_database_url)}, tmp_path)
    ready = _wait_ready(proc, port)
    assert ready.json()["status"] == "pass"
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    paths = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    assert "/v1/auth/login" in paths and "/v1/admin/tokens" in paths  # modules, under /v1
    # The token vault's admin routes manage credentials: no caller without the admin role.
    assert httpx.get(f"http://127.0.0.1:{port}/v1/admin/tokens").status_code == 401
    out = _stop(proc, signal.SIGTERM)
    assert f"API docs at http://127.0.0.1:{port}/docs" in out
    assert "pgstack: database postgresql+asyncpg://" in out
    # Without encryption keys, two-factor sign-in and the vault cannot work: serve says so.
    assert "warning: PGSTACK_ENCRYPTION_KEYS is not set: two-factor sign-in" in out


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


@pytest.mark.slow
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


def _pgstack(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGSTACK, *args], cwd=cwd, env=_env(env or {}), capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_user_and_key_commands_reach_the_embedded_server_serve_runs(
    serve: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    # proves: C4, O6
    proc, port = _start(serve, {}, tmp_path)
    _wait_ready(proc, port, 120)

    created = _pgstack(
        ["users", "create-admin", "--email", "Root@Example.com", "--generate"], tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert "embedded PostgreSQL with its data in" in created.stderr
    password = created.stdout.split("password (shown once): ")[1].strip()

    # The administrator exists in the database serve uses: it signs in and uses admin routes.
    base = f"http://127.0.0.1:{port}"
    login = httpx.post(
        f"{base}/v1/auth/login", json={"email": "root@example.com", "password": password}
    )
    assert login.status_code == 200, login.text
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert httpx.get(f"{base}/v1/admin/users", headers=bearer).status_code == 200

    listed = _pgstack(["users", "list", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [u["email"] for u in json.loads(listed.stdout)["users"]] == ["root@example.com"]

    # `db info` gives a URL psql connects with, as it is printed.
    info = json.loads(_pgstack(["db", "info", "--json"], tmp_path).stdout)
    count = subprocess.run(
        ["psql", info["psql"], "-Atc", "SELECT count(*) FROM users"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert count.stdout.strip() == "1", count.stderr

    # The commands joined serve's server and left it running for serve.
    assert httpx.get(f"{base}/ready").status_code == 200
    _stop(proc)
    assert not (tmp_path / ".pgstack" / "pgdata" / "postmaster.pid").exists()


@pytest.mark.parametrize("command", [["users", "list"], ["tokens", "list"], ["db", "info"]])
def test_production_refuses_the_embedded_default(command: list[str]) -> None:
    # proves: O6, C4
    result = runner.invoke(app, command, env={"PGSTACK_ENV": "production"})
    assert result.exit_code == 1
    one_line(result.output)
    assert "PGSTACK_ENV=production needs a database server: set DATABASE_URL" in result.output
    assert not Path(".pgstack").exists()  # no embedded server was started


def test_production_serve_refuses_to_start_without_its_secrets(pgstack_database_url: URL) -> None:
    # proves: O6
    env = {"PGSTACK_ENV": "production", "DATABASE_URL": raw(pgstack_database_url)}
    result = runner.invoke(app, ["serve", "--port", str(closed_port())], env=env)
    assert result.exit_code == 1
    one_line(result.output)
    assert "PGSTACK_ENCRYPTION_KEYS and PGSTACK_CURSOR_SECRET" in result.output


def test_unexpected_errors_are_one_line_with_a_hint(tmp_path: Path) -> None:
    # proves: O6
    (tmp_path / "broken_refreshers.py").write_text(
        "raise ValueError('refresher registry\\nis broken')\n", encoding="utf-8"
    )
    args = ["tokens", "refresh-due", "--refreshers", "broken_refreshers:REFRESHERS"]
    result = _pgstack(args, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "ValueError: refresher registry is broken" in result.stderr
    assert "--verbose" in result.stderr and "PGSTACK_DEBUG=1" in result.stderr

    for extra, env in (([], {"PGSTACK_DEBUG": "1"}), (["--verbose"], {})):
        debug = _pgstack([*extra, *args], tmp_path, env)
        assert debug.returncode == 1
        assert "Traceback" in debug.stderr and "broken_refreshers.py" in debug.stderr


def test_importing_the_cli_and_asking_for_help_loads_nothing_heavy() -> None:
    # proves: O6
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pgstack.cli.main import app\n"
        "for args in (['--help'], ['db', 'upgrade', '--help'], ['users', 'list', '--help'],"
        " ['tokens', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "heavy = {'sqlalchemy', 'fastapi', 'alembic', 'asyncpg', 'uvicorn', 'rich'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_text_is_whole() -> None:
    # proves: O6
    upgrade = runner.invoke(app, ["db", "upgrade", "--help"])
    assert "pyproject.toml with [tool.pgstack] (default: nearest above)." in upgrade.output
    users = runner.invoke(app, ["users", "--help"])
    assert (
        "Create a verified user with the admin role (asks for the password unless --generate)."
        in users.output
    )


def test_listings_do_not_cut_when_piped(pgstack_migrated_url: URL) -> None:
    # proves: O6
    email = "a-very-long-mailbox-name-" + "x" * 80 + "@example.com"
    env = {"DATABASE_URL": raw(pgstack_migrated_url)}
    created = runner.invoke(app, ["users", "create-admin", "--email", email, "--generate"], env=env)
    assert created.exit_code == 0, created.output
    table = runner.invoke(app, ["users", "list"], env=env)
    assert table.exit_code == 0, table.output
    assert email in table.output
    as_json = json.loads(runner.invoke(app, ["users", "list", "--json"], env=env).output)
    assert as_json["total"] == 1 and as_json["users"][0]["roles"] == ["admin"]
    info = json.loads(runner.invoke(app, ["db", "info", "--json"], env=env).output)
    assert info["psql"].startswith("postgresql://")


def test_db_info_masks_the_password_unless_asked(pgstack_database_url: URL) -> None:
    # proves: C1
    import asyncio

    role = f"pgstack_info_{uuid.uuid4().hex[:8]}"
    asyncio.run(_fetch(pgstack_database_url, f"CREATE ROLE {role} LOGIN PASSWORD 'hunter2-secret'"))
    try:
        env = {
            "DATABASE_URL": raw(pgstack_database_url.set(username=role, password="hunter2-secret"))
        }
        result = runner.invoke(app, ["db", "info", "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert "hunter2-secret" not in result.output
        assert f"postgresql://{role}:***@" in json.loads(result.output)["psql"]
        shown = runner.invoke(app, ["db", "info", "--json", "--show-password"], env=env)
        assert f"postgresql://{role}:hunter2-secret@" in json.loads(shown.output)["psql"]
    finally:
        asyncio.run(_fetch(pgstack_database_url, f"DROP ROLE {role}"))
