"""docs/tokens.md runs as written: its example prints what the page says it prints."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import uvicorn
from sqlalchemy.engine import URL
from tokens_fake_provider import FakeProvider, token_endpoint

from pgstack.crypto import generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.tokens import TokenVault

DOC = Path(__file__).resolve().parents[2] / "docs" / "tokens.md"


def block(label: str) -> str:
    for body in re.findall(r"```\w+\n(.*?)```", DOC.read_text(), flags=re.S):
        if body.startswith(f"# {label}\n"):
            return body
    raise AssertionError(f"docs/tokens.md has no block labelled {label!r}")


def expected_output() -> str:
    match = re.search(r"Its output:\n\n```text\n(.*?)```", DOC.read_text(), flags=re.S)
    assert match is not None
    return match.group(1)


def run_block(label: str, url: URL, folder: Path) -> subprocess.CompletedProcess[str]:
    """The page's block `label` run as a script of its own against `url`."""
    script = folder / label
    script.write_text(block(label))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    env["PGSTACK_ENCRYPTION_KEYS"] = generate_key("2026a")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_example_runs_and_prints_what_the_page_says(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    # proves: T1, T2, T3, T4
    result = run_block("example.py", pgstack_migrated_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_output(), result.stdout + result.stderr


async def test_saving_in_a_transaction_runs_as_the_page_shows(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    # proves: T1
    result = run_block("save_in_transaction.py", pgstack_migrated_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "committed: at-1\nstored: ['acme']\n"
    assert "It prints `committed: at-1`, then `stored: ['acme']`." in DOC.read_text()
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        entries = await conn.fetch("SELECT action FROM audit_log ORDER BY seq")
        assert [r["action"] for r in entries] == ["crm.connected"]
    finally:
        await conn.close()


async def test_the_authlib_refresher_runs_against_a_provider(
    vault: TokenVault, provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: T6
    (tmp_path / "crm_refresh.py").write_text(block("crm_refresh.py"))
    server = uvicorn.Server(
        uvicorn.Config(token_endpoint(provider), host="127.0.0.1", port=0, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        monkeypatch.setenv("CRM_TOKEN_URL", f"http://127.0.0.1:{port}/oauth/token")
        monkeypatch.setenv("CRM_CLIENT_ID", "client-id")
        monkeypatch.setenv("CRM_CLIENT_SECRET", "client-secret")
        monkeypatch.syspath_prepend(str(tmp_path))
        crm_refresh = importlib.import_module("crm_refresh")
        first = await provider.grant()
        await vault.save("crm", "acme", "at-0", first, expires_in=-1)
        tokens = await asyncio.gather(
            *(vault.get_valid_token("crm", "acme", crm_refresh.refresh_crm) for _ in range(5))
        )
        await crm_refresh.client.aclose()
    finally:
        server.should_exit = True
        await serving
        sys.modules.pop("crm_refresh", None)
    assert len({t.access_token for t in tokens}) == 1
    stored = await vault.get("crm", "acme")
    assert stored.refresh_token not in (None, first)  # the rotated refresh token was kept
    assert [sent for sent, _ in await provider.calls()] == [first]  # one refresh, over HTTP
