"""The token vault's admin routes and CLI: expiry status and history, never a token value."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from fastapi import Depends, Header
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app as cli
from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError, PermissionDeniedError
from pgstack.tokens import TokenVault
from pgstack.web import create_app
from pgstack.web.tokens import tokens_router

runner = CliRunner()


async def invoke(*args: Any, **kwargs: Any) -> Any:
    # The commands run their own event loop, so they run on a thread of their own here.
    return await asyncio.to_thread(runner.invoke, *args, **kwargs)


def require_admin(x_admin: str | None = Header(default=None)) -> None:
    if x_admin != "yes":
        raise PermissionDeniedError("admins only")


@pytest.fixture
async def client(pgstack_migrated_db: Database) -> Any:
    app = create_app(
        database=pgstack_migrated_db,
        monitor_interval=None,
        routers=[tokens_router(dependencies=[Depends(require_admin)])],
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"x-admin": "yes"}
        ) as http:
            yield http


async def test_admin_routes_list_history_and_delete_without_secrets(
    vault: TokenVault, client: httpx.AsyncClient
) -> None:
    # proves: T2, T4
    await vault.save("crm", "acme", "secret-access", "secret-refresh", expires_in=60)
    await vault.save("crm", "beta", "secret-access-2", "secret-refresh-2", expires_in=7200)

    async def failing(old: str) -> dict[str, Any]:
        raise RuntimeError("provider down")

    await vault.get_valid_token("crm", "acme", failing)

    listed = await client.get("/admin/tokens")
    assert listed.status_code == 200
    body = listed.json()
    assert [(t["account"], t["status"]) for t in body] == [("acme", "expiring"), ("beta", "valid")]
    assert (
        body[0]["refresh_failures"] == 1 and body[0]["last_error"] == "RuntimeError: provider down"
    )

    history = await client.get("/admin/tokens/crm/acme/history")
    assert history.status_code == 200
    assert [h["success"] for h in history.json()] == [False]

    assert "secret" not in listed.text + history.text

    assert (await client.delete("/admin/tokens/crm/acme")).status_code == 204
    missing = await client.delete("/admin/tokens/crm/acme")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert [t["account"] for t in (await client.get("/admin/tokens")).json()] == ["beta"]


async def test_admin_routes_require_the_authorization_dependency(
    vault: TokenVault, client: httpx.AsyncClient
) -> None:
    # proves: T2
    await vault.save("crm", "acme", "at", "rt", expires_in=60)
    denied = await client.get("/admin/tokens", headers={"x-admin": "no"})
    assert denied.status_code == 403
    denied = await client.delete("/admin/tokens/crm/acme", headers={"x-admin": "no"})
    assert denied.status_code == 403
    assert (await vault.get("crm", "acme")).access_token == "at"
    with pytest.raises(ConfigurationError, match="authorization dependency"):
        tokens_router(dependencies=[])


@pytest.mark.parametrize("hostile", ["\x00", "crm\x00", "a\nb", "\x1b[31m", "\x7f"])
async def test_admin_routes_refuse_control_characters_with_422(
    vault: TokenVault, client: httpx.AsyncClient, hostile: str
) -> None:
    # proves: T2
    await vault.save("crm", "acme", "at", "rt", expires_in=60)
    answers = [
        await client.get("/admin/tokens", params={"provider": hostile}),
        await client.get(f"/admin/tokens/{quote(hostile, safe='')}/acme/history"),
        await client.get(f"/admin/tokens/crm/{quote(hostile, safe='')}/history"),
        await client.delete(f"/admin/tokens/crm/{quote(hostile, safe='')}"),
        await client.delete(f"/admin/tokens/{quote(hostile, safe='')}/acme"),
    ]
    assert [a.status_code for a in answers] == [422] * 5, [a.text for a in answers]
    assert all(a.headers["content-type"] == "application/problem+json" for a in answers)
    # Other unicode is text like any other.
    fine = await client.get("/admin/tokens", params={"provider": "crm-ünï-💡"})
    assert fine.status_code == 200 and fine.json() == []
    assert (await vault.get("crm", "acme")).access_token == "at"


# -- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield {**cli_env, "PGSTACK_ENCRYPTION_KEYS": f"{generate_key('new')},{generate_key('old')}"}
    configure_encryption(None)


async def test_cli_lists_rotates_and_refreshes(
    pgstack_migrated_db: Database, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # proves: T4, T5
    ring = KeyRing.parse(cli_env["PGSTACK_ENCRYPTION_KEYS"])
    old_only = KeyRing.parse(cli_env["PGSTACK_ENCRYPTION_KEYS"].split(",")[1])
    old_vault = TokenVault(pgstack_migrated_db, keys=old_only)
    await old_vault.save("crm", "acme", "secret-at", "secret-rt", expires_in=60)
    await old_vault.save("crm", "beta", "secret-at-2", "secret-rt-2", expires_in=7200)

    listed = await invoke(cli, ["tokens", "list", "--json"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["account"], r["status"]) for r in rows] == [("acme", "expiring"), ("beta", "valid")]
    assert "secret" not in listed.output

    # `tokens rotate-keys` is `keys rotate`: every encrypted column, the vault's included.
    rotated = await invoke(cli, ["tokens", "rotate-keys"], env=cli_env)
    assert rotated.exit_code == 0, rotated.output
    assert rotated.output.splitlines() == [
        "re-encrypted 4 value(s) in 3 column(s) under key 'new'",
        "every encrypted value uses key 'new': older keys can be removed",
    ]
    again = await invoke(cli, ["keys", "rotate"], env=cli_env)
    assert again.output.splitlines()[0] == "re-encrypted 0 value(s) in 3 column(s) under key 'new'"

    (tmp_path / "myrefreshers.py").write_text(
        textwrap.dedent(
            """
            async def crm(refresh_token):
                return {"access_token": "renewed-" + refresh_token[-4:], "expires_in": 3600}

            REFRESHERS = {"crm": crm}
            """
        )
    )
    refreshed = await invoke(
        cli, ["tokens", "refresh-due", "--refreshers", "myrefreshers:REFRESHERS"], env=cli_env
    )
    assert refreshed.exit_code == 0, refreshed.output
    assert refreshed.output.strip() == "refreshed 1 token(s), 0 failed"
    new_vault = TokenVault(pgstack_migrated_db, keys=ring)
    assert (await new_vault.get("crm", "acme")).access_token == "renewed-t-rt"

    history = await invoke(cli, ["tokens", "history", "crm", "acme"], env=cli_env)
    assert history.exit_code == 0, history.output
    assert "success" in history.output and "1 attempt(s)" in history.output
    assert "secret" not in history.output

    bad = await invoke(cli, ["tokens", "refresh-due", "--refreshers", "nope"], env=cli_env)
    assert bad.exit_code == 1
    assert bad.output.strip().startswith("error: --refreshers 'nope' must be module:attribute")


async def test_cli_keys_status_and_rotate_cover_the_applications_models(
    pgstack_migrated_db: Database,
    pgstack_migrated_url: URL,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # proves: T5
    (tmp_path / "pyproject.toml").write_text('[tool.pgstack]\nmodels = "keysapp"\n')
    (tmp_path / "keysapp.py").write_text(
        textwrap.dedent(
            """
            from sqlalchemy import MetaData
            from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
            from pgstack.orm import EncryptedText

            class Base(DeclarativeBase):
                metadata = MetaData()

            class Card(Base):
                __tablename__ = "keysapp_cards"
                id: Mapped[int] = mapped_column(primary_key=True)
                number: Mapped[str] = mapped_column(EncryptedText())
            """
        )
    )
    old_only = KeyRing.parse(cli_env["PGSTACK_ENCRYPTION_KEYS"].split(",")[1])
    await TokenVault(pgstack_migrated_db, keys=old_only).save("crm", "acme", "at", "rt")
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        await conn.execute("CREATE TABLE keysapp_cards (id int PRIMARY KEY, number text)")
        for n in range(3):
            value = old_only.encrypt(f"4111-{n}", "keysapp_cards.number")
            await conn.execute("INSERT INTO keysapp_cards VALUES ($1, $2)", n, value)
    finally:
        await conn.close()

    status = await invoke(cli, ["keys", "status", "--json"], env=cli_env)
    assert status.exit_code == 1, status.output  # old keys in use
    usage = json.loads(status.output)
    assert usage["primary_kid"] == "new"
    assert {(u["column"], u["kid"], u["values"]) for u in usage["usage"]} == {
        ("keysapp_cards.number", "old", 3),
        ("oauth_tokens.access_token", "old", 1),
        ("oauth_tokens.refresh_token", "old", 1),
    }
    assert "4111" not in status.output

    rotated = await invoke(cli, ["keys", "rotate", "--batch-size", "2"], env=cli_env)
    assert rotated.exit_code == 0, rotated.output
    assert rotated.output.splitlines()[0].startswith("re-encrypted 5 value(s) in 4 column(s)")
    status = await invoke(cli, ["keys", "status"], env=cli_env)
    assert status.exit_code == 0, status.output
    assert "older keys can be removed" in status.output
    assert "4111" not in rotated.output + status.output
