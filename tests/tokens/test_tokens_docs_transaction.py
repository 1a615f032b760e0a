"""docs/tokens.md's `save_in_transaction.py` runs and prints what the page says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from pgstack.crypto import generate_key
from pgstack.db.admin import asyncpg_dsn

DOC = Path(__file__).resolve().parents[2] / "docs" / "tokens.md"


def block(label: str) -> str:
    for body in re.findall(r"```\w+\n(.*?)```", DOC.read_text(), flags=re.S):
        if body.startswith(f"# {label}\n"):
            return body
    raise AssertionError(f"docs/tokens.md has no block labelled {label!r}")


async def test_saving_in_a_transaction_runs_as_the_page_shows(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    # proves: T1
    script = tmp_path / "save_in_transaction.py"
    script.write_text(block("save_in_transaction.py"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = pgstack_migrated_url.render_as_string(hide_password=False)
    env["PGSTACK_ENCRYPTION_KEYS"] = generate_key("2026a")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "committed: at-1\nstored: ['acme']\n"
    assert "It prints `committed: at-1`, then `stored: ['acme']`." in DOC.read_text()
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        entries = await conn.fetch("SELECT action FROM audit_log ORDER BY seq")
        assert [r["action"] for r in entries] == ["crm.connected"]
    finally:
        await conn.close()
