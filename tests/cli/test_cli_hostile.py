"""Hostile and mistaken input to the command line: one clear line, the right exit, no leak."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app

from .conftest import one_line

runner = CliRunner()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Top@Secret99@127.0.0.1:5432/appdb",
        "postgresql://app:Top@Secret99@h1:5432,h2:5433/appdb",
    ],
)
def test_an_unencoded_at_sign_in_the_password_is_refused_without_echoing_it(url: str) -> None:
    # proves: C1 (a password is never printed: its tail would have been shown as the host)
    for command in (["db", "info"], ["users", "list"]):
        result = runner.invoke(app, command, env={"DATABASE_URL": url})
        assert result.exit_code == 1, result.output
        one_line(result.output)
        assert "%40" in result.output
        assert "Secret99" not in result.output


def test_a_port_out_of_range_is_refused_at_once() -> None:
    # proves: C1
    result = runner.invoke(
        app, ["users", "list"], env={"DATABASE_URL": "postgresql://app@127.0.0.1:99999/appdb"}
    )
    assert result.exit_code == 1, result.output
    one_line(result.output)
    assert "DATABASE_URL" in result.output


def test_a_command_on_an_unreachable_server_tries_once() -> None:
    # proves: C2 (a command runs once: no minute of retries and warnings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{port}/appdb"
    for command in (["users", "list"], ["tenants", "list"], ["audit", "tail"]):
        result = runner.invoke(app, command, env={"DATABASE_URL": url})
        assert result.exit_code == 1, result.output
        one_line(result.output)
        assert "after 1 attempt(s)" in result.output
        assert "hunter2-secret" not in result.output
    # A configured number of attempts still counts.
    result = runner.invoke(
        app,
        ["users", "list"],
        env={"DATABASE_URL": url, "DATABASE_CONNECT_ATTEMPTS": "2"},
    )
    assert result.exit_code == 1 and "after 2 attempt(s)" in result.output, result.output


def test_a_database_without_migrations_says_to_upgrade(pgstack_empty_url: URL) -> None:
    # proves: G3 (every command, and `db check`, points at the upgrade that is missing)
    env = {"DATABASE_URL": pgstack_empty_url.render_as_string(hide_password=False)}
    for command in (["users", "list"], ["tenants", "list"], ["audit", "tail"]):
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 1, result.output
        one_line(result.output)
        assert "pgstack db upgrade" in result.output
        assert "ProgrammingError" not in result.output and "SQL" not in result.output
    check = runner.invoke(app, ["db", "check"], env=env)
    assert check.exit_code == 1
    # Writing a revision would copy pgstack's own tables into the app's branch.
    assert "fix: `pgstack db upgrade`" in check.output
    assert "--autogenerate" not in check.output


@pytest.mark.parametrize("rev_id", ["../../escape", "bad id!", "a/b", ""])
def test_a_revision_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, rev_id: str) -> None:
    # proves: G3 (the id names the file: "../" would write outside the versions folder)
    (tmp_path / "mig").mkdir()
    result = runner.invoke(
        app, ["db", "revision", "-m", "x", "--rev-id", rev_id, "--migrations", "mig"]
    )
    assert result.exit_code == 1, result.output
    one_line(result.output)
    assert "letters, digits and underscores" in result.output
    assert list((tmp_path / "mig").iterdir()) == []
    assert not (tmp_path.parent / "escape_x.py").exists()
    empty = runner.invoke(app, ["db", "revision", "-m", "  ", "--migrations", "mig"])
    assert empty.exit_code == 1 and "-m" in empty.output, empty.output
    made = runner.invoke(
        app, ["db", "revision", "-m", "x", "--rev-id", "abc_1", "--migrations", "mig"]
    )
    assert made.exit_code == 0, made.output
    assert [p.name for p in (tmp_path / "mig").iterdir()] == ["abc_1_x.py"]


@pytest.mark.parametrize(
    ("options", "named"),
    [(["--host", ""], "--host"), (["--port", "99999"], "--port"), (["--port", "0"], "--port")],
)
def test_serve_refuses_an_address_it_cannot_listen_on(options: list[str], named: str) -> None:
    # proves: W1 (refused before anything is started or migrated)
    result = runner.invoke(app, ["serve", *options])
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["tokens", "history", "crm", "acme", "--limit", "-1"],
        ["tokens", "history", "crm", "acme", "--limit", "99999999999999999999"],
        ["tokens", "refresh-due", "--refreshers", "x:Y", "--within-minutes", "nan"],
        ["tokens", "refresh-due", "--refreshers", "x:Y", "--within-minutes", "1e300"],
        ["ratelimit", "exceeded", "--within", "99999999999999999999"],
        ["ratelimit", "cleanup", "--older-than", "99999999999999999999"],
        ["keys", "rotate", "--lock-wait", "-5"],
        ["keys", "rotate", "--lock-wait", "inf"],
        [
            "api-keys",
            "create",
            "--email",
            "a@example.com",
            "--name",
            "k",
            "--expires-in-days",
            "3000000",
        ],
    ],
)
def test_numbers_out_of_range_are_refused_before_the_database(command: list[str]) -> None:
    # proves: T4, T5, N4, I5 (a usage error, exit 2; the unreachable server is never asked)
    result = runner.invoke(app, command, env={"DATABASE_URL": "postgresql://app@127.0.0.1:1/x"})
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert "Traceback" not in result.output and "Cannot connect" not in result.output
