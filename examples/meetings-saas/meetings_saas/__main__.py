"""`python -m meetings_saas`: migrate, install a dev workspace, issue a dev API key, serve.

`python -m meetings_saas import-mappings T0DEV mappings.json` imports a workspace's account
mappings from a JSON file (all or nothing; again is harmless).
With no DATABASE_URL the data lives in an embedded PostgreSQL in `.pgstack/`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

import uvicorn

from meetings_saas.app import PROJECT, build_app
from meetings_saas.service import import_mappings, install_workspace
from pgstack import Database, PgStackError, Settings
from pgstack.crypto import configure_encryption, generate_key
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject, upgrade_async
from pgstack.tenancy import Tenancy, tenant

DEV_USER = "dev@example.com"
DEV_TEAM = "T0DEV"


def dev_encryption_key(settings: Settings) -> None:
    """Without PGSTACK_ENCRYPTION_KEYS, outside production: a key kept in `.pgstack/`."""
    if settings.encryption_keys is not None or settings.environment == "production":
        return
    key_file = PROJECT / ".pgstack" / "dev-encryption-key"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(generate_key("dev"))
        key_file.chmod(0o600)
    configure_encryption(key_file.read_text().strip())


async def prepare(db: Database) -> tuple[str, str]:
    """Migrate, make the dev user and workspace (idempotent); a key and the workspace id."""
    try:
        await db.connect()
        await upgrade_async(
            db.settings.with_url(db.url), project=MigrationProject.from_pyproject(PROJECT)
        )
        identity = Identity(db)
        user = await identity.users.get_by_email(DEV_USER)
        if user is None:
            password = secrets.token_urlsafe(24)  # never used: the dev user signs in by key
            user = await identity.users.create(DEV_USER, password, name="Dev", verified=True)
        workspace, _ = await install_workspace(db, DEV_TEAM, "Dev team", user, "U0DEV")
        issued = await identity.api_keys.create(
            user.id, "python -m meetings_saas", scopes=["tenant:owner"]
        )
        return issued.key, str(workspace.id)
    finally:
        await db.disconnect()


async def import_file(db: Database, team_id: str, data: bytes) -> int:
    try:
        await db.connect()
        workspace = await Tenancy(db).tenants.get_by_external_id(team_id)
        with tenant(workspace.id):
            async with db.transaction() as session:
                return await import_mappings(session, data)
    finally:
        await db.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m meetings_saas", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve the API (the default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    imports = commands.add_parser("import-mappings", help="import account mappings from JSON")
    imports.add_argument("team_id", help="the workspace's Slack team id, such as T0DEV")
    imports.add_argument("file", type=Path, help="a JSON array of mappings")
    argv = sys.argv[1:]
    if not argv or argv[0] not in (*commands.choices, "-h", "--help"):
        argv = ["serve", *argv]  # `python -m meetings_saas [--port N]` serves
    args = parser.parse_args(argv)
    settings = Settings()
    dev_encryption_key(settings)
    db = Database(settings)
    if args.command == "import-mappings":
        try:
            written = asyncio.run(import_file(db, args.team_id, args.file.read_bytes()))
        except (PgStackError, OSError) as exc:
            sys.exit(f"import-mappings: {exc}")
        print(f"{written} mapping(s) written")
        return
    if settings.environment != "production":
        key, workspace_id = asyncio.run(prepare(db))
        print(f"dev API key for {DEV_USER} (owner of {DEV_TEAM}): {key}")
        print(f"workspace URL: http://{args.host}:{args.port}/workspaces/{workspace_id}")
        print(
            f"try: curl -H 'Authorization: Bearer {key}' "
            f"http://{args.host}:{args.port}/workspaces/{workspace_id}/meetings"
        )
    uvicorn.run(build_app(database=db), host=args.host, port=args.port)


main()
