"""More hostile input to the command line: one clear line, nothing stored lost, no secret lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import ConfigurationError

from .conftest import one_line

runner = CliRunner()
PGSTACK = str(Path(sys.executable).with_name("pgstack"))
STRONG = "violet Harbour 42 lanterns drift"
UNREACHABLE = "postgresql://app@127.0.0.1:1/appdb"
LIBRARY_NAMES = ("Traceback", "TypeError", "Error:", "Warning", "Exception")


def raw(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def _counts(url: URL) -> tuple[int, int, int]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM api_keys),"
            " (SELECT count(*) FROM audit_log)"
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


def counts(url: URL) -> tuple[int, int, int]:
    """Users, API keys and audit entries stored in the database at `url`."""
    return asyncio.run(_counts(url))


def pgstack(
    url: URL, *args: str, stdout: int | None = subprocess.PIPE, stdin: str | int | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `pgstack` in a process of its own, so its stdout can be a real file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = raw(url)
    # Keys stored as an HMAC: no warning about plain SHA-256 beside the one line under test.
    env["PGSTACK_API_KEY_PEPPERS"] = "p" * 40
    return subprocess.run(
        [PGSTACK, *args],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        input=stdin if isinstance(stdin, str) else None,
        stdin=stdin if isinstance(stdin, int) else None,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_secret_that_cannot_be_shown_is_never_stored(pgstack_migrated_url: URL) -> None:
    # proves: I1, I5 (a one-time password or key is written before the commit, or nothing is)
    url = pgstack_migrated_url
    before = counts(url)
    with open("/dev/full", "w") as full:
        admin = pgstack(
            url,
            "users",
            "create-admin",
            "--email",
            "a@example.com",
            "--generate",
            stdout=full.fileno(),
        )
    assert admin.returncode == 1, admin.stderr
    one_line(admin.stderr)
    assert admin.stderr.startswith("error: The generated password could not be written")
    assert "nothing was created" in admin.stderr
    assert "No space left on device" in admin.stderr
    assert counts(url) == before

    # A piped password is read as it is: no getpass warning, no echo, no prompt.
    made = pgstack(url, "users", "create-admin", "--email", "a@example.com", stdin=f"{STRONG}\n")
    assert made.returncode == 0, made.stderr
    assert made.stderr == ""
    assert made.stdout.startswith("created administrator a@example.com (")
    assert STRONG not in made.stdout
    after_user = counts(url)
    assert after_user[0] == before[0] + 1

    with open("/dev/full", "w") as full:
        key = pgstack(
            url,
            "api-keys",
            "create",
            "--email",
            "a@example.com",
            "--name",
            "ci",
            stdout=full.fileno(),
        )
    assert key.returncode == 1, key.stderr
    one_line(key.stderr)
    assert key.stderr.startswith("error: The API key could not be written")
    assert "nothing was created" in key.stderr
    assert counts(url) == after_user  # no key, and no audit entry for one

    shown = pgstack(url, "api-keys", "create", "--email", "a@example.com", "--name", "ci")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1].startswith("pgs_")
    assert counts(url)[1] == after_user[1] + 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("db", "info"), ("--help",), ("audit", "--help")])
def test_output_that_cannot_be_written_is_one_line_not_a_traceback(
    pgstack_migrated_url: URL, args: tuple[str, ...]
) -> None:
    # proves: O6 (every CLI error is one line: any command, its help too, into a full device)
    with open("/dev/full", "w") as full:
        result = pgstack(pgstack_migrated_url, *args, stdout=full.fileno())
    assert result.returncode == 1, result.stderr
    one_line(result.stderr)
    assert result.stderr.startswith(
        "error: the output could not be written to standard output (No space left on device)"
    )
    assert "Traceback" not in result.stderr


def test_an_empty_piped_password_is_refused_in_one_line(pgstack_migrated_url: URL) -> None:
    # proves: I1
    before = counts(pgstack_migrated_url)
    result = pgstack(
        pgstack_migrated_url,
        "users",
        "create-admin",
        "--email",
        "b@example.com",
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    one_line(result.stderr)
    assert result.stderr.startswith("error: No password on standard input")
    assert not any(word in result.stderr for word in LIBRARY_NAMES)
    assert counts(pgstack_migrated_url) == before


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("foo=bar", "'foo'"),
        ("sslmode=require&connect_timeout=5", "DATABASE_CONNECT_TIMEOUT"),
        ("statement_cache_size=0", "'statement_cache_size'"),
    ],
)
def test_an_unknown_url_parameter_is_named_with_what_is_accepted(query: str, named: str) -> None:
    # proves: C1 (refused when read, instead of the driver's TypeError at connect)
    result = runner.invoke(app, ["users", "list"], env={"DATABASE_URL": f"{UNREACHABLE}?{query}"})
    assert result.exit_code == 1, result.output
    one_line(result.output)
    assert result.output.startswith("error: DATABASE_URL has the query parameter")
    assert named in result.output
    assert "Accepted: application_name, " in result.output and "sslrootcert" in result.output
    assert "TypeError" not in result.output and "Cannot connect" not in result.output
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_replica_urls=f"{UNREACHABLE}?{query}")
    assert caught.value.message.startswith("DATABASE_REPLICA_URLS has the query parameter")


def test_the_url_parameters_in_use_still_connect_and_a_password_is_not_shown(
    pgstack_database_url: URL, tmp_path: Path
) -> None:
    # proves: C1, C9
    for url in (
        "postgresql://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem&sslcert=c&sslkey=k",
        "postgresql://u@h1:5432,h2:5433/d?target_session_attrs=read-write&application_name=x",
        "postgresql://u@h/d?ssl=require&passfile=/p&command_timeout=5&timeout=3",
        "postgresql://u@/d?host=/run/postgresql&port=5433&prepared_statement_cache_size=0",
    ):
        assert Settings(database_url=url).url is not None
    url = pgstack_database_url.update_query_dict(
        {
            "application_name": "x",
            "target_session_attrs": "any",
            "command_timeout": "30",
            "prepared_statement_cache_size": "0",
            "password": "hunter2-in-query",
        }
    )
    result = runner.invoke(app, ["db", "info", "--json"], env={"DATABASE_URL": raw(url)})
    assert result.exit_code == 0, result.output
    assert "server_version" in result.output
    assert "hunter2-in-query" not in result.output


def _current(url: URL) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return sorted(r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version"))
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.mark.parametrize(
    ("revision", "message"),
    [
        ("", "error: Name the revision to go back to: -1 for one step back, a revision id"),
        ("  ", "error: Name the revision to go back to"),
        ("nosuchrev", "error: 'nosuchrev' is not a revision these migrations know"),
        ("-1x", "error: '-1x' is not a revision these migrations know"),
        ("@-1", "error: '@-1' is not a revision these migrations know"),
        ("+1", "error: '+1' goes forward, and a downgrade goes back"),
        ("pgstack@+2", "error: 'pgstack@+2' goes forward"),
        ("nobranch@-1", "error: 'nobranch@-1' names the branch 'nobranch'"),
    ],
)
def test_a_downgrade_target_that_is_no_step_back_is_refused_and_nothing_is_undone(
    pgstack_migrated_url: URL, revision: str, message: str
) -> None:
    # proves: G3, O6 (Alembic's exception names never reach the user; "-1x" no longer undoes)
    before = _current(pgstack_migrated_url)
    env = {"DATABASE_URL": raw(pgstack_migrated_url)}
    result = runner.invoke(app, ["db", "downgrade", revision, "--yes"], env=env)
    assert result.exit_code == 1, result.output
    one_line(result.output)
    assert result.output.startswith(message), result.output
    assert "pgstack db history" in result.output or "branch" in result.output
    for name in ("AssertionError", "ResolutionError", "RevisionError", "CommandError"):
        assert name not in result.output
    assert _current(pgstack_migrated_url) == before != []


def test_upgrade_to_an_empty_revision_is_refused() -> None:
    # proves: G3
    result = runner.invoke(app, ["db", "upgrade", ""], env={"DATABASE_URL": UNREACHABLE})
    assert result.exit_code == 1, result.output
    one_line(result.output)
    assert result.output.startswith("error: Name the revision to upgrade to")
    assert "AssertionError" not in result.output


def test_seed_of_an_unknown_data_set_prints_only_its_error(pgstack_migrated_url: URL) -> None:
    # proves: G6 (no empty line from a progress bar before the error)
    result = runner.invoke(
        app, ["db", "seed", "dev"], env={"DATABASE_URL": raw(pgstack_migrated_url)}
    )
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.output.startswith("error: No seeder is registered for data set 'dev'")
    one_line(result.output)


def test_serve_names_what_a_router_attribute_is(tmp_path: Path) -> None:
    # proves: W1 (refused before the database is asked)
    module = f"cli_routes_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from fastapi import APIRouter\n"
        "DICT = {'a': APIRouter()}\n"
        "MIXED = [APIRouter(), 'oops']\n"
        "EMPTY = []\n"
        "def make():\n    return {'x': 1}\n"
    )
    env = {"DATABASE_URL": UNREACHABLE}
    for attr, words in (
        ("DICT", "is dict, not a fastapi.APIRouter"),
        ("MIXED", "is a list whose item 2 is str, not a fastapi.APIRouter"),
        ("EMPTY", "is an empty list; give a fastapi.APIRouter"),
        ("make", "returned dict, not a fastapi.APIRouter"),
    ):
        result = runner.invoke(app, ["serve", "--router", f"{module}:{attr}"], env=env)
        assert result.exit_code == 1, result.output
        one_line(result.stderr)  # stdout has the warnings about unset secrets
        assert result.stderr.startswith(f"error: --router '{module}:{attr}' {words}"), result.stderr
        assert "Cannot connect" not in result.output


def test_doctor_refuses_an_ignore_that_names_no_finding() -> None:
    # proves: O1 (a misspelt id would silence nothing while seeming to)
    env = {"DATABASE_URL": UNREACHABLE}
    result = runner.invoke(app, ["db", "doctor", "--ignore", "role", "--ignore", "bogus"], env=env)
    assert result.exit_code == 2, result.output
    one_line(result.output)
    assert result.output.startswith("error: --ignore 'bogus' names no finding of the doctor")
    assert "indexes.unused" in result.output and "settings" in result.output
    assert "Cannot connect" not in result.output
    # Ids and groups that exist pass, and the doctor goes on to the database.
    known = ["--ignore", "indexes.unused", "--ignore", "settings", "--ignore", "doctor"]
    passed = runner.invoke(app, ["db", "doctor", *known], env=env)
    assert passed.exit_code == 1 and "Cannot connect" in passed.output, passed.output


def test_every_finding_id_the_doctor_reports_can_be_ignored() -> None:
    # proves: O1 (the list --ignore checks against is the one the checks report)
    import re

    from pgstack.db import doctor

    source = Path(doctor.__file__).read_text()
    reported = set(re.findall(r'^\s+"([a-z]+\.[a-z_.-]+)",\n\s+"(?:info|warn|error)', source, re.M))
    reported |= {f"{group}.skipped" for group in re.findall(r'ctx\.skipped\("(\w+)"', source)}
    reported |= {f"settings.{s}" for s in re.findall(r'^\s+"(\w+_timeout)",$', source, re.M)}
    reported |= {f"bloat.{kind}" for kind in re.findall(r'\("(table|index)", _', source)}
    assert len(reported) > 20
    assert reported <= set(doctor.FINDING_IDS)
    assert doctor.unknown_ignores(["indexes", "role.owner", "doctor.bloat.locked", "x"]) == ["x"]
