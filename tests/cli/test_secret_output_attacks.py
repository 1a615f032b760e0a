"""A one-time secret with standard output closed (`>&-`), closed together with standard error,
or sent to /dev/null: nothing is created, the command fails, and never with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from .conftest import one_line
from .test_cli_hostile_more import counts, raw

PGSTACK = str(Path(sys.executable).with_name("pgstack"))
STRONG = "violet Harbour 42 lanterns drift"


def pgstack(url: URL, redirect: str, *args: str, stdin: str | None = None) -> tuple[int, str]:
    """The installed `pgstack` run by a shell with `redirect` applied (`>&-`, `>/dev/null`);
    its exit status and what it wrote to standard error (when that is left open)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = raw(url)
    env["PGSTACK_API_KEY_PEPPERS"] = "p" * 40
    done = subprocess.run(
        ["sh", "-c", f'exec "$0" "$@" {redirect}', PGSTACK, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr


ADMIN = ("users", "create-admin", "--email", "a@example.com", "--generate")
KEY = ("api-keys", "create", "--email", "a@example.com", "--name", "ci")


@pytest.mark.parametrize(
    ("redirect", "reason"),
    [
        (">&-", "could not be written to standard output (Bad file descriptor)"),
        (">/dev/null", "would be written to /dev/null and lost"),
    ],
)
def test_a_secret_is_not_stored_when_stdout_is_closed_or_dev_null(
    pgstack_migrated_url: URL, redirect: str, reason: str
) -> None:
    # proves: I1, I5, O6 (a one-time password or key shown to no one is not created)
    url = pgstack_migrated_url
    before = counts(url)
    status, err = pgstack(url, redirect, *ADMIN)
    assert status == 1, err
    one_line(err)
    assert err.startswith("error: The generated password ")
    assert reason in err
    assert "nothing was created" in err
    assert counts(url) == before

    admin = ("users", "create-admin", "--email", "a@example.com")
    status, err = pgstack(url, "", *admin, stdin=STRONG)
    assert status == 0, err
    with_user = counts(url)
    status, err = pgstack(url, redirect, *KEY)
    assert status == 1, err
    one_line(err)
    assert err.startswith("error: The API key ")
    assert reason in err
    assert counts(url) == with_user  # no key, and no audit entry for one


def test_stdout_and_stderr_both_closed_store_nothing_and_fail(pgstack_migrated_url: URL) -> None:
    # proves: I1, O6 (no message can be shown: the exit status says it failed)
    url = pgstack_migrated_url
    before = counts(url)
    status, err = pgstack(url, ">&- 2>&-", *ADMIN)
    assert status == 1
    assert err == ""
    assert counts(url) == before


@pytest.mark.parametrize("args", [("db", "info"), ("--help",)])
def test_a_closed_stdout_is_one_line_for_any_command(
    pgstack_migrated_url: URL, args: tuple[str, ...]
) -> None:
    # proves: O6 (it was an AttributeError traceback, raised while the CLI was imported)
    status, err = pgstack(pgstack_migrated_url, ">&-", *args)
    assert status == 1, err
    one_line(err)
    assert err.startswith(
        "error: the output could not be written to standard output (Bad file descriptor)"
    )


def test_a_secret_written_to_a_file_is_stored(pgstack_migrated_url: URL, tmp_path: Path) -> None:
    # proves: I1 (a regular file is fine: the secret is there to read)
    url = pgstack_migrated_url
    before = counts(url)
    out = tmp_path / "admin.txt"
    status, err = pgstack(url, f"> {out}", *ADMIN)
    assert status == 0, err
    assert "password (shown once): " in out.read_text()
    assert counts(url)[0] == before[0] + 1
