"""`pgstack db` migration, reset, clear, validate and seed commands, in-process and as processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.db.admin import asyncpg_dsn
from pgstack.migrations import MigrationProject, history, status, upgrade
from pgstack.migrations._env import LOCK_KEY
from pgstack.testing import schema_snapshot

from .conftest import closed_port, one_line

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sampleapp"
PGSTACK = str(Path(sys.executable).with_name("pgstack"))
runner = CliRunner()

# pgstack's revisions oldest first, and its head: its modules keep adding revisions.
PGSTACK_REVISIONS = [
    info.revision for info in reversed(history(project=MigrationProject.pgstack_only()))
]
PGSTACK_HEAD = PGSTACK_REVISIONS[-1]
# The sample app's revision depends on pgstack_0001 only, so a later pgstack head stays in the
# version table beside it; pgstack_0001 itself is then implied by sampleapp_0001.
SAMPLE_CURRENT = {"sampleapp_0001", PGSTACK_HEAD} - {"pgstack_0001"}


def listed(output: str, prefix: str) -> list[str]:
    """The comma-separated revisions on the line of `output` that starts with `prefix`."""
    line = next(line for line in output.splitlines() if line.startswith(prefix))
    return line.removeprefix(prefix).split(" (")[0].strip().split(", ")


def assert_run_order(revisions: list[str]) -> None:
    """All of pgstack's and the sample app's revisions, each after what it needs."""
    assert sorted(revisions) == sorted([*PGSTACK_REVISIONS, "sampleapp_0001"]), revisions
    assert [r for r in revisions if r in PGSTACK_REVISIONS] == PGSTACK_REVISIONS, revisions
    assert revisions.index("pgstack_0001") < revisions.index("sampleapp_0001"), revisions


def raw(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def cli(url: URL | str, *args: str, input: str | None = None, **env: str):  # type: ignore[no-untyped-def]
    environment = {"DATABASE_URL": url if isinstance(url, str) else raw(url), **env}
    return runner.invoke(app, ["db", *args], env=environment, input=input)


def query(url: URL, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def execute(url: URL, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def process_env(url: URL, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env.update({"DATABASE_URL": raw(url), **extra})
    return env


def copy_sample(tmp_path: Path) -> Path:
    target = tmp_path / "app"
    shutil.copytree(SAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


# -- upgrade, current, history, downgrade --------------------------------------------------


def test_upgrade_current_history_downgrade(pgstack_empty_url: URL) -> None:
    # proves: G3, G2
    url, project = pgstack_empty_url, ["--project", str(SAMPLE)]
    result = cli(url, "current", *project)
    assert result.exit_code == 0, result.output
    assert "no revision applied" in result.output
    assert_run_order(listed(result.output, "missing: "))

    result = cli(url, "upgrade", *project)
    assert result.exit_code == 0, result.output
    for rev in PGSTACK_REVISIONS:
        assert f"applied {rev} (pgstack:" in result.output
    assert "applied sampleapp_0001 (sampleapp: authors and notes)" in result.output
    assert set(listed(result.output, "current: ")) == SAMPLE_CURRENT
    assert "nothing to apply" in cli(url, "upgrade", *project).output

    result = cli(url, "current", *project)
    assert "sampleapp_0001 (sampleapp: authors and notes) (head)" in result.output
    assert "missing" not in result.output

    # Captured output has no 80-column limit: no revision id is cut short.
    result = cli(url, "history", *project)
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")] for line in result.output.splitlines()]
    rows = {c[1].split()[0]: c for c in cells if len(c) > 2 and c[1] and "_" in c[1]}
    order = list(rows)  # newest first
    assert set(order) == {*PGSTACK_REVISIONS, "sampleapp_0001"}, result.output
    assert [r for r in order if r in PGSTACK_REVISIONS] == PGSTACK_REVISIONS[::-1]
    assert order.index("sampleapp_0001") < order.index("pgstack_0001")
    assert all("yes" in row for row in rows.values()), result.output
    listing = json.loads(cli(url, "history", "--json", *project).output)
    assert [r["revision"] for r in listing] == order  # the same rows, newest first
    assert all(r["applied"] is True for r in listing)

    # Going below the current revision asks first; "no" changes nothing.
    result = cli(url, "downgrade", "sampleapp@base", *project, input="n\n")
    assert result.exit_code == 1
    assert "this undoes 1 revision(s)" in result.output
    assert status(url, project=MigrationProject.from_pyproject(SAMPLE)).at_head

    if len(status(url, project=MigrationProject.from_pyproject(SAMPLE)).current) > 1:
        # With the app's and pgstack's heads both applied, a relative step is ambiguous.
        result = cli(url, "downgrade", "-1", "--yes", *project)
        assert result.exit_code == 1
        assert "is ambiguous" in result.output and "Traceback" not in result.output
        assert status(url, project=MigrationProject.from_pyproject(SAMPLE)).at_head
    result = cli(url, "downgrade", "sampleapp@base", "--yes", *project)
    assert result.exit_code == 0, result.output
    assert "undone sampleapp_0001" in result.output
    assert listed(result.output, "current: ") == [PGSTACK_HEAD]

    cli(url, "upgrade", *project)
    result = cli(url, "downgrade", "base", "--yes", *project)
    assert result.exit_code == 0, result.output
    for rev in ["sampleapp_0001", *PGSTACK_REVISIONS]:
        assert f"undone {rev}" in result.output
    assert "current: none" in result.output
    assert query(url, "SELECT to_regclass('sample_notes') IS NULL") is True


def test_downgrade_without_a_terminal_needs_yes(sample_url: URL) -> None:
    # proves: G3
    result = cli(sample_url, "downgrade", "base", "--project", str(SAMPLE))
    assert result.exit_code == 1
    versions = query(sample_url, "SELECT string_agg(version_num, ',') FROM alembic_version")
    assert set(str(versions).split(",")) == SAMPLE_CURRENT


def test_first_app_revision_starts_a_branch_that_depends_on_pgstack(
    tmp_path: Path, pgstack_empty_url: URL
) -> None:
    # proves: G2, G3
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pgstack]\nmigrations = "migrations"\nbranch = "notes"\n'
    )
    first = runner.invoke(app, ["db", "revision", "-m", "create notes", "--rev-id", "notes_1"])
    assert first.exit_code == 0, first.output
    body = (tmp_path / "migrations" / "versions" / "notes_1_create_notes.py").read_text()
    assert "branch_labels: str | Sequence[str] | None = ('notes',)" in body
    # It depends on pgstack's head when it is written.
    assert f"depends_on: str | Sequence[str] | None = {PGSTACK_HEAD!r}" in body
    assert "down_revision: str | Sequence[str] | None = None" in body

    second = runner.invoke(app, ["db", "revision", "-m", "add tags", "--rev-id", "notes_2"])
    assert second.exit_code == 0, second.output
    body = (tmp_path / "migrations" / "versions" / "notes_2_add_tags.py").read_text()
    assert "down_revision: str | Sequence[str] | None = 'notes_1'" in body
    assert "depends_on: str | Sequence[str] | None = None" in body

    applied = cli(pgstack_empty_url, "upgrade")
    assert applied.exit_code == 0, applied.output
    for rev in PGSTACK_REVISIONS:
        assert f"applied {rev} (pgstack:" in applied.output
    assert "applied notes_1 (notes: create notes)" in applied.output
    assert "current: notes_2" in applied.output


# -- check and autogenerate, as real processes -----------------------------------------------


def run(app_dir: Path, url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGSTACK, "db", *args],
        cwd=app_dir,
        env=process_env(url),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_drifted_model_fails_check_until_a_revision_is_made(
    pgstack_empty_url: URL, tmp_path: Path
) -> None:
    # proves: G3, G4
    # Real processes: the app's models are imported there and nowhere else.
    app_dir = copy_sample(tmp_path)
    url = pgstack_empty_url
    assert run(app_dir, url, "upgrade").returncode == 0
    clean = run(app_dir, url, "check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "models, migrations and database agree" in clean.stdout

    models = app_dir / "sampleapp" / "models.py"
    source = models.read_text()
    models.write_text(
        source.replace(
            '    status: Mapped[str] = mapped_column(Text, server_default="draft")\n',
            '    status: Mapped[str] = mapped_column(Text, server_default="draft")\n'
            "    priority: Mapped[int | None] = mapped_column(BigInteger)\n",
        )
    )
    drifted = run(app_dir, url, "check")
    assert drifted.returncode == 1
    assert "1 difference(s)" in drifted.stdout
    assert (
        "column sample_notes.priority: in the models, missing from the database (BIGINT)"
        in drifted.stdout
    )

    made = run(app_dir, url, "revision", "--autogenerate", "-m", "add priority")
    assert made.returncode == 0, made.stdout + made.stderr
    path = Path(made.stdout.strip().removeprefix("wrote "))
    assert path.parent == app_dir / "migrations" / "versions"
    revision = path.read_text()
    assert "op.add_column('sample_notes', sa.Column('priority', sa.BigInteger()" in revision
    assert "down_revision: str | Sequence[str] | None = 'sampleapp_0001'" in revision
    assert "op.drop_column('sample_notes', 'priority')" in revision

    assert run(app_dir, url, "upgrade").returncode == 0
    assert run(app_dir, url, "check").returncode == 0
    again = run(app_dir, url, "revision", "--autogenerate", "-m", "nothing")
    assert again.returncode == 1
    assert "agree: no revision written" in again.stderr


def test_check_lists_pending_revisions(pgstack_empty_url: URL) -> None:
    # proves: G3
    upgrade(pgstack_empty_url, "pgstack@head", project=MigrationProject.from_pyproject(SAMPLE))
    result = run(SAMPLE, pgstack_empty_url, "check")
    assert result.returncode == 1
    assert "not applied: sampleapp_0001 (sampleapp: authors and notes)" in result.stdout


def test_two_upgrade_processes_started_together_migrate_once(pgstack_empty_url: URL) -> None:
    # proves: D5, G1
    url = pgstack_empty_url

    async def scenario() -> list[subprocess.CompletedProcess[str]]:
        holder = await asyncpg.connect(asyncpg_dsn(url))
        try:
            # Hold the lock so both processes are certainly waiting at the same time.
            await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            procs = [
                await asyncio.create_subprocess_exec(
                    PGSTACK,
                    "db",
                    "upgrade",
                    "--project",
                    str(SAMPLE),
                    env=process_env(url),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                for _ in range(2)
            ]
            waiting = 0
            for _ in range(300):
                waiting = await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted AND objid = $1",
                    LOCK_KEY & 0xFFFFFFFF,
                )
                if waiting == 2:
                    break
                await asyncio.sleep(0.1)
            assert waiting == 2, "both processes should be waiting for the migration lock"
            await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
            results = []
            for proc in procs:
                out, err = await asyncio.wait_for(proc.communicate(), 120)
                results.append(
                    subprocess.CompletedProcess(
                        [], proc.returncode or 0, out.decode(), err.decode()
                    )
                )
            return results
        finally:
            await holder.close()

    results = asyncio.run(scenario())
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    migrated = [r.stdout for r in results if "applied pgstack_0001" in r.stdout]
    assert len(migrated) == 1, [r.stdout for r in results]
    for rev in [*PGSTACK_REVISIONS, "sampleapp_0001"]:
        assert f"applied {rev}" in migrated[0]
    assert sum("nothing to apply" in r.stdout for r in results) == 1
    versions = query(url, "SELECT string_agg(version_num, ',') FROM alembic_version")
    assert set(str(versions).split(",")) == SAMPLE_CURRENT


# -- reset and clear -----------------------------------------------------------------------


def add_author(url: URL) -> None:
    execute(url, "INSERT INTO sample_authors (email, name) VALUES ('kept@example.com', 'Kept')")


def test_reset_is_refused_in_production_and_touches_nothing(sample_url: URL) -> None:
    # proves: G5
    add_author(sample_url)
    before = schema_snapshot(sample_url)
    result = cli(sample_url, "reset", "--yes", "--project", str(SAMPLE), PGSTACK_ENV="production")
    assert result.exit_code == 1
    one_line(result.output)
    assert "refused because PGSTACK_ENV=production" in result.output
    assert query(sample_url, "SELECT count(*) FROM sample_authors") == 1
    assert schema_snapshot(sample_url) == before


def test_reset_asks_then_drops_and_migrates_afresh(sample_url: URL) -> None:
    # proves: G5
    add_author(sample_url)
    execute(sample_url, "CREATE TYPE stray_mood AS ENUM ('a'); CREATE TABLE stray (m stray_mood)")
    declined = cli(sample_url, "reset", "--project", str(SAMPLE), input="n\n")
    assert declined.exit_code == 1
    assert query(sample_url, "SELECT count(*) FROM sample_authors") == 1

    result = cli(sample_url, "reset", "--project", str(SAMPLE), input="y\n")
    assert result.exit_code == 0, result.output
    assert_run_order(listed(result.output, "reset; applied "))
    assert query(sample_url, "SELECT count(*) FROM sample_authors") == 0
    assert query(sample_url, "SELECT to_regclass('stray') IS NULL") is True
    assert query(sample_url, "SELECT to_regtype('stray_mood') IS NULL") is True
    assert status(sample_url, project=MigrationProject.from_pyproject(SAMPLE)).at_head


def test_reset_names_every_host_of_a_multi_host_url(sample_url: URL) -> None:
    # proves: G5 (the question names each server a multi-host URL could reach)
    add_author(sample_url)
    port = sample_url.port or 5432
    host = sample_url.host or "127.0.0.1"
    both = (
        f"postgresql://{sample_url.username}@/{sample_url.database}"
        f"?host={host}:{port}&host=localhost:{port}"
    )
    declined = cli(both, "reset", "--project", str(SAMPLE), input="n\n")
    assert declined.exit_code == 1
    assert f"{host}:{port},localhost:{port}" in declined.output, declined.output
    assert query(sample_url, "SELECT count(*) FROM sample_authors") == 1


def test_clear_is_refused_in_production_and_touches_nothing(sample_url: URL) -> None:
    # proves: G6
    add_author(sample_url)
    result = cli(sample_url, "clear", "--yes", "--project", str(SAMPLE), PGSTACK_ENV="production")
    assert result.exit_code == 1
    one_line(result.output)
    assert "refused because PGSTACK_ENV=production" in result.output
    assert query(sample_url, "SELECT count(*) FROM sample_authors") == 1


def test_clear_removes_rows_and_keeps_schema_and_version(sample_url: URL) -> None:
    # proves: G6
    add_author(sample_url)
    meta_rows = query(sample_url, "SELECT count(*) FROM pgstack_meta")
    before = schema_snapshot(sample_url)
    result = cli(sample_url, "clear", "--yes", "--project", str(SAMPLE))
    assert result.exit_code == 0, result.output
    assert "sample_authors: 1 row(s) removed" in result.output
    assert query(sample_url, "SELECT count(*) FROM sample_authors") == 0
    assert query(sample_url, "SELECT count(*) FROM pgstack_meta") == meta_rows
    versions = query(sample_url, "SELECT string_agg(version_num, ',') FROM alembic_version")
    assert set(str(versions).split(",")) == SAMPLE_CURRENT
    assert schema_snapshot(sample_url) == before


# -- seed ----------------------------------------------------------------------------------


def counts(url: URL) -> tuple[object, object]:
    return (
        query(url, "SELECT count(*) FROM sample_authors"),
        query(url, "SELECT count(*) FROM sample_notes"),
    )


def test_seeding_twice_adds_nothing_the_second_time(sample_url: URL) -> None:
    # proves: G6
    first = cli(sample_url, "seed", "dev", "--project", str(SAMPLE))
    assert first.exit_code == 0, first.output
    assert "sample_notes: 2100 row(s) added" in first.output
    assert "2100/2100" in first.output  # the progress bar, finished
    once = counts(sample_url)
    assert once == (3, 2100)

    second = cli(sample_url, "seed", "dev", "--project", str(SAMPLE))
    assert second.exit_code == 0, second.output
    assert "sample_authors: 0 row(s) added" in second.output
    assert "sample_notes: 0 row(s) added" in second.output
    assert counts(sample_url) == once

    test_set = cli(sample_url, "seed", "test", "--project", str(SAMPLE))
    assert test_set.exit_code == 0, test_set.output
    assert counts(sample_url) == (3, 2103)


def test_seeding_is_refused_in_production_and_needs_known_data_sets(sample_url: URL) -> None:
    # proves: G6
    refused = cli(sample_url, "seed", "dev", "--project", str(SAMPLE), PGSTACK_ENV="production")
    assert refused.exit_code == 1
    one_line(refused.output)
    unknown = cli(sample_url, "seed", "staging", "--project", str(SAMPLE))
    assert unknown.exit_code == 1
    one_line(unknown.output)
    assert "No seeder is registered for data set 'staging'" in unknown.output
    assert counts(sample_url) == (0, 0)


# -- validate ------------------------------------------------------------------------------


def test_validate_passes_on_a_migrated_database(sample_url: URL) -> None:
    # proves: G5
    result = cli(sample_url, "validate", "--project", str(SAMPLE))
    assert result.exit_code == 0, result.output
    assert "database validation: pass" in result.output
    assert "FAIL" not in result.output
    assert "pool_size" in result.output  # the configuration summary
    # The probe rolled back: nothing of it stays.
    assert (
        query(sample_url, "SELECT count(*) FROM pgstack_meta WHERE key LIKE 'pgstack.validate%'")
        == 0
    )


def test_validate_fails_naming_what_is_missing(sample_url: URL) -> None:
    # proves: G5
    execute(
        sample_url,
        "DROP INDEX ix_sample_notes_author_id; ALTER TABLE sample_notes DROP COLUMN body; "
        "ALTER TABLE sample_notes DROP CONSTRAINT ck_sample_notes_status",
    )
    result = cli(sample_url, "validate", "--project", str(SAMPLE))
    assert result.exit_code == 1
    assert (
        "FAIL schema: table sample_notes: index ix_sample_notes_author_id missing" in result.output
    )
    assert "FAIL schema: table sample_notes: column body missing" in result.output
    assert "check constraint ck_sample_notes_status" in result.output


def test_validate_fails_when_migrations_are_missing(pgstack_empty_url: URL) -> None:
    # proves: G5
    upgrade(pgstack_empty_url, "pgstack@head", project=MigrationProject.from_pyproject(SAMPLE))
    result = cli(pgstack_empty_url, "validate", "--project", str(SAMPLE))
    assert result.exit_code == 1
    assert "FAIL migrations: missing: sampleapp_0001" in result.output
    assert "FAIL schema: table sample_notes: missing" in result.output


# -- readiness in `db health` --------------------------------------------------------------


def test_db_health_reports_migrations_for_a_configured_project(
    sample_url: URL, pgstack_empty_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: C5
    monkeypatch.chdir(SAMPLE)
    at_head = cli(sample_url, "health", "--json")
    assert at_head.exit_code == 0, at_head.output
    assert json.loads(at_head.output)["checks"]["migrations"][0]["status"] == "pass"

    upgrade(pgstack_empty_url, "pgstack@head", project=MigrationProject.from_pyproject(SAMPLE))
    behind = cli(pgstack_empty_url, "health", "--json")
    assert behind.exit_code == 1
    check = json.loads(behind.output)["checks"]["migrations"][0]
    assert check["status"] == "fail"
    assert "sampleapp_0001" in check["output"]


# -- expected failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["upgrade"],
        ["current"],
        ["check"],
        ["validate"],
        ["downgrade", "base", "--yes"],
    ],
)
def test_unreachable_server_is_one_line_without_the_password(args: list[str]) -> None:
    # proves: G3, C1
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/appdb"
    result = cli(url, *args, "--project", str(SAMPLE))
    assert result.exit_code == 1
    one_line(result.output)
    assert "hunter2-secret" not in result.output
    assert "127.0.0.1" in result.output


def test_bad_options_are_one_line(sample_url: URL) -> None:
    # proves: G3
    missing = cli(sample_url, "upgrade", "--migrations", "no/such/folder")
    assert missing.exit_code == 1
    one_line(missing.output)
    assert "no/such/folder" in missing.output

    unknown = cli(sample_url, "downgrade", "no_such_rev", "--yes", "--project", str(SAMPLE))
    assert unknown.exit_code == 1
    one_line(unknown.output)
    assert "no_such_rev" in unknown.output

    models = cli(sample_url, "check", "--project", str(SAMPLE), "--models", "no_such_module")
    assert models.exit_code == 1
    one_line(models.output)
    assert "no_such_module" in models.output


# -- serve migrates first --------------------------------------------------------------------


def test_serve_applies_the_app_s_migrations_before_it_listens(
    pgstack_empty_url: URL, tmp_path: Path
) -> None:
    # proves: W1, C5, G2
    app_dir = copy_sample(tmp_path)
    port = closed_port()
    proc = subprocess.Popen(
        [PGSTACK, "serve", "--port", str(port)],
        cwd=app_dir,
        env=process_env(pgstack_empty_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready is not None, "serve did not answer"
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["migrations"][0]["status"] == "pass"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    applied = re.search(r"migrations applied: (.*)", out)
    assert applied is not None, out
    assert_run_order(applied.group(1).split(", "))


# -- every verb in a broken setup ------------------------------------------------------------

# Each verb with arguments that make it touch what it needs (the database, the scripts).
VERBS = {
    "upgrade": [],
    "downgrade": ["base", "--yes"],
    "current": [],
    "history": [],
    "revision": ["-m", "more", "--autogenerate"],
    "merge": ["-m", "join"],
    "check": [],
    "reset": ["--yes"],
    "clear": ["--yes"],
    "validate": [],
    "seed": ["dev"],
    "health": [],
    "info": [],
}
# The verbs that read the scripts, and those that connect to the database.
PROJECT_VERBS = set(VERBS) - {"health", "info"}
DATABASE_VERBS = set(VERBS) - {"merge"}


def two_heads(tmp_path: Path) -> Path:
    """A copy of the sample app whose branch has two heads (two revisions made in parallel)."""
    app_dir = copy_sample(tmp_path)
    for rev in ("sampleapp_0002a", "sampleapp_0002b"):
        (app_dir / "migrations" / "versions" / f"{rev}.py").write_text(
            f'"""parallel work {rev}"""\n\nrevision = "{rev}"\ndown_revision = "sampleapp_0001"\n'
            "branch_labels = None\ndepends_on = None\n\n\n"
            "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
        )
    return app_dir


def assert_one_error_line(result: object, hint: str) -> None:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code != 0, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    lines = [line for line in output.strip().splitlines() if not line.startswith("pgstack: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert hint in lines[0], output


@pytest.mark.parametrize("verb", sorted(PROJECT_VERBS))
def test_every_verb_in_a_wrong_folder_is_one_line_with_a_hint(
    verb: str, sample_url: URL, tmp_path: Path
) -> None:
    # proves: O6, G3
    result = cli(sample_url, verb, *VERBS[verb], "--project", str(tmp_path / "no-such-app"))
    assert_one_error_line(result, "--project")


@pytest.mark.parametrize("verb", sorted(DATABASE_VERBS))
def test_every_verb_against_an_unreachable_server_is_one_line_with_a_hint(verb: str) -> None:
    # proves: O6, G3
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/appdb"
    project = ["--project", str(SAMPLE)] if verb in PROJECT_VERBS else []
    result = cli(url, verb, *VERBS[verb], *project)
    if verb == "health":  # a report, not an error: the check fails and says why
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "running" in result.output
        return
    assert_one_error_line(result, "server is running")
    assert "hunter2-secret" not in result.output


@pytest.mark.parametrize("verb", sorted(DATABASE_VERBS))
def test_every_verb_as_a_missing_role_is_one_line_with_a_hint(verb: str, sample_url: URL) -> None:
    # proves: O6, G3
    url = raw(sample_url.set(username="pgstack_no_such_role", password="pw-not-shown"))
    project = ["--project", str(SAMPLE)] if verb in PROJECT_VERBS else []
    result = cli(url, verb, *VERBS[verb], *project)
    if verb == "health":
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "db init" in result.output
        return
    assert_one_error_line(result, "db init")
    assert "pw-not-shown" not in result.output


@pytest.mark.parametrize("verb", ["upgrade", "check", "revision"])
def test_two_heads_say_merge_the_heads(verb: str, sample_url: URL, tmp_path: Path) -> None:
    # proves: O6, G3, D5
    app_dir = two_heads(tmp_path)
    result = cli(sample_url, verb, *VERBS[verb], "--project", str(app_dir))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "merge" in result.output and "autogenerate" not in result.output


def test_check_with_two_heads_prints_a_merge_command_that_runs(
    sample_url: URL, tmp_path: Path
) -> None:
    # proves: O6, G3, D5
    app_dir = two_heads(tmp_path)
    checked = cli(sample_url, "check", "--project", str(app_dir))
    assert checked.exit_code == 1
    command = re.search(r"`pgstack (db merge[^`]*)`", checked.output)
    assert command is not None, checked.output
    merged = cli(sample_url, *command.group(1).split()[1:], "--project", str(app_dir))
    assert merged.exit_code == 0, merged.output
    upgraded = cli(sample_url, "upgrade", "--project", str(app_dir))
    assert upgraded.exit_code == 0, upgraded.output
    again = cli(sample_url, "check", "--project", str(app_dir))
    assert again.exit_code == 0, again.output
