"""`python -m knowledge_platform`: migrate, make a dev administrator, serve.

With no DATABASE_URL the data lives in an embedded PostgreSQL in `.pgstack/`.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

from knowledge_platform.app import PROJECT, build_app
from pgstack import Database, Settings
from pgstack.identity import Identity, generate_password
from pgstack.migrations import MigrationProject, upgrade_async

DEV_ADMIN = "admin@example.com"


async def prepare(db: Database) -> str | None:
    """Migrate, and make the dev administrator once; its password, shown that one time."""
    try:
        await db.connect()
        await upgrade_async(
            db.settings.with_url(db.url), project=MigrationProject.from_pyproject(PROJECT)
        )
        identity = Identity(db)
        if await identity.users.get_by_email(DEV_ADMIN) is not None:
            return None
        password = generate_password()
        await identity.users.create(
            DEV_ADMIN, password, username="admin", roles=["admin"], verified=True
        )
        return password
    finally:
        await db.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m knowledge_platform", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    settings = Settings()
    db = Database(settings)
    if settings.environment != "production":
        password = asyncio.run(prepare(db))
        if password is not None:
            print(f"dev administrator {DEV_ADMIN} (username admin), password: {password}")
        base = f"http://{args.host}:{args.port}"
        print(
            f"sign in: curl -X POST {base}/auth/login -H 'content-type: application/json' "
            '-d \'{"username": "admin", "password": "..."}\''
        )
    uvicorn.run(build_app(database=db), host=args.host, port=args.port)


main()
