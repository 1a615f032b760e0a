"""The service: pgstack's app (lifespan, probes, metrics, problem details) plus our routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from knowledge_platform.api import admin, router
from pgstack import Database, Settings
from pgstack.identity import User
from pgstack.migrations import MigrationProject
from pgstack.web import create_app
from pgstack.web.identity import identity_router

PROJECT = Path(__file__).resolve().parents[1]


async def print_token(user: User, purpose: str, token: str) -> None:
    """Development delivery of verification and reset tokens: a real service e-mails them."""
    print(f"{purpose} token for {user.email}: {token}")


def build_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """The app; it applies pending migrations (pgstack's and ours) before it reports started.

    With `DATABASE_REPLICA_URLS` set, pgstack sends the reads of these routes to a replica.
    Outside production, verification and reset tokens are printed; in production, pass your
    mailer to `identity_router(send_token=...)` here (until then they are not delivered).
    """
    db = database if database is not None else Database(settings)
    development = db.settings.environment != "production"
    return create_app(
        database=db,
        title="knowledge-platform",
        migrations=MigrationProject.from_pyproject(PROJECT),
        migrate=True,
        routers=[identity_router(send_token=print_token if development else None), router, admin],
    )
