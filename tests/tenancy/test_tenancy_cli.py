"""`pgstack tenants ...` against a migrated database."""

from __future__ import annotations

import json

from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli.main import app

from .conftest import STRONG

runner = CliRunner()


def test_tenants_cli_create_list_plan_status_and_members(pgstack_migrated_url: URL) -> None:
    # proves: N1, N5
    env = {"DATABASE_URL": pgstack_migrated_url.render_as_string(hide_password=False)}

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env, input=f"{STRONG}\n{STRONG}\n")
        assert result.exit_code == code, result.output
        return result.output

    run("users", "create-admin", "--email", "root@example.com")
    assert "created" in run(
        "tenants", "create", "T1", "--name", "Acme", "--owner-email", "root@example.com"
    )
    assert "already exists" in run("tenants", "create", "T1", "--name", "Again", code=1)
    run("tenants", "set-plan", "T1", "pro")
    shown = json.loads(run("tenants", "show", "T1"))
    assert shown["plan"] == "pro" and shown["status"] == "active"
    run("tenants", "suspend", "T1")
    assert "cannot become past_due" in run("tenants", "set-status", "T1", "past_due", code=1)
    run("tenants", "reactivate", "T1")
    listed = json.loads(run("tenants", "list", "--json"))
    assert listed["total"] == 1 and listed["tenants"][0]["status"] == "active"
    members = json.loads(run("tenants", "members", "T1", "--json"))["members"]
    assert [(m["email"], m["role"]) for m in members] == [("root@example.com", "owner")]
    assert "No tenant" in run("tenants", "show", "nope", code=1)
    assert "not a role" in run(
        "tenants", "add-member", "T1", "--email", "root@example.com", "--role", "Bad Role", code=1
    )
