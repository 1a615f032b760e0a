"""`python -m crm_agent demo | import-legacy | health`; the refresh worker is pgstack's own.

pgstack tokens refresh-due --refreshers crm_agent.oauth:REFRESHERS --within-minutes 10
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from crm_agent.health import NAMES, check
from pgstack import Database

HERE = Path(__file__).resolve().parents[1]
app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("import-legacy")
def import_legacy_command() -> None:
    """Move the old agent's plaintext tokens into the vault (run once; safe to run again)."""

    from crm_agent.legacy import import_legacy
    from pgstack.tokens import TokenVault

    async def run() -> None:
        async with Database() as db:
            result = await import_legacy(db, TokenVault(db))
        typer.echo(f"imported {result.imported} token(s); kept {result.kept} the vault had")

    asyncio.run(run())


@app.command()
def health(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Database and tokens for cron: exit 0 OK, 1 WARNING, 2 CRITICAL."""

    async def run() -> int:
        db = Database()
        try:
            result = await check(db)
        finally:
            await db.disconnect()
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
        else:
            for level, message in result.findings:
                typer.echo(f"{NAMES[level]:8} {message}")
        return result.code

    raise typer.Exit(asyncio.run(run()))


@app.command()
def demo() -> None:
    """The whole story on a fake provider: import, concurrent callers, one refresh, the API."""
    from pgstack.crypto import ENV_VAR, configure_encryption, generate_key

    if not os.environ.get(ENV_VAR):
        key_file = HERE / ".pgstack" / "demo-encryption-key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(generate_key("demo"))
        typer.echo(f"{ENV_VAR} not set: using the demo key in {key_file}")
        configure_encryption(key_file.read_text().strip())
    asyncio.run(_demo())


async def _demo() -> None:
    # The demo's pieces only: the cron commands above start faster without them.
    import httpx
    from sqlalchemy import delete

    from crm_agent import provider
    from crm_agent.legacy import PROVIDER, import_legacy
    from crm_agent.models import LegacyToken
    from crm_agent.oauth import REFRESHERS, refresh_crm
    from pgstack.migrations import MigrationProject, upgrade_async
    from pgstack.tokens import TokenVault

    crm = provider.FakeCRM()
    with provider.ProviderServer(crm) as server:
        os.environ["CRM_TOKEN_URL"] = server.token_url
        os.environ["CRM_CLIENT_ID"] = provider.CLIENT_ID
        os.environ["CRM_CLIENT_SECRET"] = provider.CLIENT_SECRET
        async with Database() as db:
            applied = await upgrade_async(db.url, project=MigrationProject.from_pyproject(HERE))
            typer.echo(f"database: {db.safe_url}; revisions applied: {len(applied)}")
            vault = TokenVault(db)

            # What the old agent left: a plaintext row whose token expires in a minute.
            await vault.delete(PROVIDER, "portal-1")
            grant = crm.grant("portal-1")
            async with db.transaction() as session:
                await session.execute(delete(LegacyToken))
                session.add(
                    LegacyToken(
                        portal_id="portal-1",
                        access_token=grant["access_token"],
                        refresh_token=grant["refresh_token"],
                        expires_at=datetime.now(UTC) + timedelta(minutes=1),
                    )
                )
            result = await import_legacy(db, vault)
            typer.echo(f"legacy import: {result.imported} imported, plaintext blanked")

            tokens = await asyncio.gather(
                *(vault.get_valid_token(PROVIDER, "portal-1", refresh_crm) for _ in range(20))
            )
            typer.echo(
                f"20 concurrent callers: {crm.refresh_calls} refresh at the provider, "
                f"{len({t.access_token for t in tokens})} distinct token"
            )
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                answer = await client.get(
                    "/crm/v3/contacts",
                    headers={"Authorization": f"Bearer {tokens[0].access_token}"},
                )
            typer.echo(f"CRM API with the refreshed token: HTTP {answer.status_code}")

            summary = await vault.refresh_due(REFRESHERS, within=timedelta(minutes=10))
            typer.echo(f"refresh-due: {summary.refreshed} refreshed, {summary.failed} failed")
            for attempt in await vault.history(PROVIDER, "portal-1"):
                typer.echo(f"audit: success={attempt.success} took {attempt.duration_ms} ms")
            report = await check(db)
            typer.echo(f"health: {NAMES[report.code]}")
