"""`python -m agent_service`: migrate, make a dev user, workspace and API key, serve.

With no DATABASE_URL the data lives in an embedded PostgreSQL in `.pgstack/`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import uuid

import uvicorn

from agent_service.api import BUILDERS
from agent_service.app import PROJECT, build_app, service_settings
from pgstack import Database, NotFoundError
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject, upgrade_async
from pgstack.tenancy import Tenancy

DEV_USER = "dev@example.com"
DEV_WORKSPACE = "dev"
DEV_SCOPES = ["agents:read", "agents:write", "audit:read", "tenant:owner", BUILDERS]


async def prepare(db: Database) -> tuple[str, uuid.UUID]:
    """Migrate, then a dev user (admin, agent builder), its workspace and a key: key, workspace."""
    try:
        await db.connect()
        project = MigrationProject.from_pyproject(PROJECT)
        await upgrade_async(db.settings.with_url(db.url), project=project)
        identity, tenancy = Identity(db), Tenancy(db)
        user = await identity.users.get_by_email(DEV_USER)
        if user is None:
            password = secrets.token_urlsafe(24)  # never used: the dev user signs in by key
            user = await identity.users.create(
                DEV_USER, password, name="Dev", roles=["admin"], groups=[BUILDERS], verified=True
            )
        try:
            workspace = await tenancy.tenants.get_by_external_id(DEV_WORKSPACE)
        except NotFoundError:
            workspace = await tenancy.tenants.create(DEV_WORKSPACE, "Dev", owner_id=user.id)
        issued = await identity.api_keys.create(
            user.id, "python -m agent_service", scopes=DEV_SCOPES
        )
        return issued.key, workspace.id
    finally:
        await db.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent_service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    db = Database(service_settings())
    if db.settings.environment != "production":
        key, workspace = asyncio.run(prepare(db))
        print(f"dev API key for {DEV_USER}: {key}")
        print(f"dev workspace: {workspace}")
        print(
            f"try: curl -H 'Authorization: Bearer {key}' -H 'X-Tenant-ID: {workspace}' "
            f"http://{args.host}:{args.port}/agents"
        )
    uvicorn.run(build_app(database=db), host=args.host, port=args.port)


main()
