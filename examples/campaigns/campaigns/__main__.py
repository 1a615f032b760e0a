"""`python -m campaigns`: migrate, seed the dev data set, issue a dev API key, serve.

With no DATABASE_URL the data lives in an embedded PostgreSQL in `.pgstack/`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

import uvicorn
from rich.progress import Progress

from campaigns.app import PROJECT, build_app
from pgstack import Database, Settings
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject, run_seeders, upgrade_async

DEV_USER = "dev@example.com"


async def prepare(db: Database) -> str:
    """Migrate, seed `dev` (idempotent) and issue a key for the dev user; the key."""
    try:
        await db.connect()
        project = MigrationProject.from_pyproject(PROJECT)
        await upgrade_async(db.settings.with_url(db.url), project=project)
        project.import_seeds()
        with Progress() as progress:
            await run_seeders(db, "dev", progress=progress)
        identity = Identity(db)
        user = await identity.users.get_by_email(DEV_USER)
        if user is None:
            password = secrets.token_urlsafe(24)  # never used: the dev user signs in by key
            user = await identity.users.create(DEV_USER, password, name="Dev", verified=True)
        issued = await identity.api_keys.create(user.id, "python -m campaigns")
        return issued.key
    finally:
        await db.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m campaigns", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    settings = Settings()
    db = Database(settings)
    if settings.environment != "production":
        key = asyncio.run(prepare(db))
        print(f"dev API key for {DEV_USER}: {key}")
        print(
            f"try: curl -H 'Authorization: Bearer {key}' http://{args.host}:{args.port}/campaigns"
        )
    uvicorn.run(build_app(database=db), host=args.host, port=args.port)


main()
