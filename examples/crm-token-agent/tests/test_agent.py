"""The agent as cron and its operators meet it: real HTTP, Authlib, PostgreSQL, subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from crm_agent.health import CRITICAL, OK, WARNING, check
from crm_agent.legacy import import_legacy
from crm_agent.models import LegacyToken
from crm_agent.oauth import refresh_crm
from crm_agent.provider import FakeCRM
from sqlalchemy import select, text
from sqlalchemy.engine import URL

from pgstack import Database, Settings
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift
from pgstack.tokens import TokenVault

HERE = Path(__file__).resolve().parents[1]
PGSTACK = str(Path(sys.executable).parent / "pgstack")


def run(args: list[str], url: URL, key: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command as cron would: a fresh process, configured by the environment."""
    environment = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "PGSTACK_ENCRYPTION_KEYS": key,
        "DATABASE_CONNECT_ATTEMPTS": "1",
        **env,
    }
    return subprocess.run(
        args, cwd=HERE, env=environment, capture_output=True, text=True, timeout=120
    )


async def save_due(vault: TokenVault, crm: FakeCRM, portal: str, minutes: float = 1) -> str:
    """Store a fresh grant for `portal` that expires in `minutes`; its refresh token."""
    grant = crm.grant(portal)
    await vault.save(
        "crm",
        portal,
        grant["access_token"],
        grant["refresh_token"],
        expires_in=timedelta(minutes=minutes),
    )
    return str(grant["refresh_token"])


async def test_concurrent_callers_refresh_once_through_authlib(
    pgstack_migrated_db: Database, encryption_key: str, crm: FakeCRM
) -> None:
    # proves: X0, T3, T6 (Authlib's OAuth2Token from a provider that rotates refresh tokens)
    vault = TokenVault(pgstack_migrated_db)
    old_refresh = await save_due(vault, crm, "portal-1")
    tokens = await asyncio.gather(
        *(vault.get_valid_token("crm", "portal-1", refresh_crm) for _ in range(25))
    )
    assert crm.refresh_calls == 1
    assert len({t.access_token for t in tokens}) == 1
    stored = await vault.get("crm", "portal-1")
    # The rotated refresh token was kept: it is the one the provider now accepts.
    assert stored.refresh_token != old_refresh
    assert stored.refresh_token in crm.refresh_tokens
    assert stored.expires_in() > 25 * 60
    async with httpx.AsyncClient(base_url=crm.base_url) as client:
        answer = await client.get(
            "/crm/v3/contacts", headers={"Authorization": f"Bearer {stored.access_token}"}
        )
    assert answer.status_code == 200 and answer.json()["portal"] == "portal-1"
    [attempt] = await vault.history("crm", "portal-1")
    assert attempt.success and attempt.new_expires_at is not None


async def test_import_legacy_encrypts_blanks_and_keeps_newer_vault_tokens(
    pgstack_migrated_db: Database, encryption_key: str, crm: FakeCRM
) -> None:
    # proves: X0, S0 (the one-off import from the legacy plaintext table), T1
    db = pgstack_migrated_db
    vault = TokenVault(db)
    newer = await save_due(vault, crm, "portal-b", minutes=60)
    soon = datetime.now(UTC) + timedelta(minutes=2)
    async with db.transaction() as session:
        session.add_all(
            [
                LegacyToken(
                    portal_id="portal-a",
                    access_token="legacy-access-a",
                    refresh_token="legacy-refresh-a",
                    expires_at=soon,
                ),
                LegacyToken(
                    portal_id="portal-b", access_token="stale-access-b", refresh_token="stale-b"
                ),
                LegacyToken(portal_id="portal-c", access_token="legacy-access-c"),
            ]
        )

    result = await import_legacy(db, vault)
    assert (result.imported, result.kept) == (2, 1)
    a = await vault.get("crm", "portal-a")
    assert (a.access_token, a.refresh_token) == ("legacy-access-a", "legacy-refresh-a")
    assert a.expires_at == soon
    c = await vault.get("crm", "portal-c")
    assert c.refresh_token is None and c.expires_at is None
    assert (await vault.get("crm", "portal-b")).refresh_token == newer

    # No plaintext secret is left anywhere in the database.
    async with db.session() as session:
        legacy = (await session.execute(text("SELECT * FROM legacy_crm_tokens"))).mappings().all()
        stored = await session.execute(text("SELECT access_token, refresh_token FROM oauth_tokens"))
        dump = repr(stored.all())
    assert all(r["access_token"] is None and r["refresh_token"] is None for r in legacy)
    assert all(r["imported_at"] is not None for r in legacy)
    assert "legacy-access-a" not in dump and "legacy-refresh-a" not in dump

    assert await import_legacy(db, vault) == type(result)(imported=0, kept=0)
    async with db.session() as session:
        assert len((await session.scalars(select(LegacyToken))).all()) == 3


async def test_refresh_due_worker_is_pgstacks_command(
    pgstack_migrated_db: Database, pgstack_migrated_url: URL, encryption_key: str, crm: FakeCRM
) -> None:
    # proves: X0, T4 (the refresh worker for cron: refresh-due with the agent's refreshers)
    vault = TokenVault(pgstack_migrated_db)
    await save_due(vault, crm, "portal-1", minutes=3)
    await save_due(vault, crm, "portal-2", minutes=8)
    await save_due(vault, crm, "portal-3", minutes=90)
    worker = [PGSTACK, "tokens", "refresh-due", "--refreshers", "crm_agent.oauth:REFRESHERS"]
    done = run([*worker, "--within-minutes", "10"], pgstack_migrated_url, encryption_key)
    assert done.returncode == 0, done.stderr
    assert "refreshed 2 token(s), 0 failed" in done.stdout
    assert crm.refresh_calls == 2
    assert (await vault.get("crm", "portal-3")).expires_in() < 91 * 60  # not touched

    # The user disconnects the app at the provider: the next run fails, exits 1, and says why
    # without the token.
    crm.revoke("portal-1")
    revoked = await vault.get("crm", "portal-1")
    await vault.save("crm", "portal-1", revoked.access_token, expires_in=60)
    failed = run([*worker, "--within-minutes", "10"], pgstack_migrated_url, encryption_key)
    assert failed.returncode == 1
    assert "1 failed" in failed.stdout
    [info] = [t for t in await vault.list_tokens() if t.account == "portal-1"]
    assert info.refresh_failures == 1 and "invalid_grant" in (info.last_error or "")
    assert revoked.refresh_token not in (info.last_error or "")


async def test_health_script_exit_codes_for_cron(
    pgstack_migrated_db: Database,
    pgstack_migrated_settings: Settings,
    pgstack_migrated_url: URL,
    pgstack_empty_url: URL,
    encryption_key: str,
    crm: FakeCRM,
) -> None:
    # proves: X0, C5 (a health check with exit codes for cron: 0 OK, 1 WARNING, 2 CRITICAL)
    async def level_of(url: URL) -> tuple[int, str]:
        async with Database(pgstack_migrated_settings.with_url(url)) as db:
            result = await check(db)
        return result.code, "\n".join(message for _, message in result.findings)

    vault = TokenVault(pgstack_migrated_db)
    code, text_ = await level_of(pgstack_migrated_url)
    assert code == WARNING and "no tokens stored" in text_
    await save_due(vault, crm, "portal-1", minutes=60)
    assert (await level_of(pgstack_migrated_url))[0] == OK
    await save_due(vault, crm, "portal-2", minutes=2)
    code, text_ = await level_of(pgstack_migrated_url)
    assert code == WARNING and "portal-2: expires in" in text_
    grant = crm.grant("portal-3")
    await vault.save("crm", "portal-3", grant["access_token"], expires_in=-60)
    code, text_ = await level_of(pgstack_migrated_url)
    assert code == CRITICAL and "portal-3: expired" in text_
    assert grant["access_token"] not in text_
    code, text_ = await level_of(pgstack_empty_url)  # never migrated
    assert code == CRITICAL and "run `pgstack db upgrade`" in text_

    # As cron runs it: the level is the exit code.
    health = [sys.executable, "-m", "crm_agent", "health"]
    expired = run([*health, "--json"], pgstack_migrated_url, encryption_key)
    assert expired.returncode == 2, expired.stdout + expired.stderr
    body = json.loads(expired.stdout)
    assert body["status"] == "CRITICAL" and grant["access_token"] not in expired.stdout
    await vault.delete("crm", "portal-3")
    warning = run(health, pgstack_migrated_url, encryption_key)
    assert warning.returncode == 1 and "WARNING  token crm/portal-2" in warning.stdout
    down = pgstack_migrated_url.set(host="127.0.0.1", port=1, query={})
    unreachable = run(health, down, encryption_key)
    assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
    assert "CRITICAL database: Cannot connect" in unreachable.stdout
    assert "Traceback" not in unreachable.stderr


@pytest.mark.parametrize("check", ["roundtrip", "drift"])
def test_migrations(check: str, pgstack_empty_url: URL, pgstack_migrated_url: URL) -> None:
    # proves: X0, G2, G4 (the agent's revision on top of pgstack's: up, down, up; no drift)
    from crm_agent.models import Base

    from pgstack.migrations import MigrationProject

    project = MigrationProject.from_pyproject(HERE)
    if check == "roundtrip":
        assert_migrations_roundtrip(pgstack_empty_url, project=project)
    else:
        assert_no_drift(pgstack_migrated_url, project=project)
        assert "legacy_crm_tokens" in Base.metadata.tables
