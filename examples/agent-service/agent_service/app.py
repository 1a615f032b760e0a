"""The service: pgstack's app and module routers, single sign-on, and our own routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI

from agent_service.api import router
from agent_service.sso import SsoConfig, sso_router
from pgstack import Database, Settings
from pgstack.migrations import MigrationProject
from pgstack.web import create_app
from pgstack.web.audit import audit_router
from pgstack.web.conversations import conversations_router
from pgstack.web.identity import TokenSender, identity_router, require_roles
from pgstack.web.tenancy import tenancy_router

PROJECT = Path(__file__).resolve().parents[1]

#: Requests per API key by its tier (and per signed-in session), counted in PostgreSQL
#: across every process. PGSTACK_RATE_LIMIT_TIERS replaces the whole table.
TIERS = {
    "trial": "20/hour",
    "standard": "600/minute",
    "pro": "6000/minute; 1000000/day",
    "session": "600/minute",
    "internal": "",
}


def service_settings(settings: Settings | None = None) -> Settings:
    """Settings from the environment, with this service's tiers unless the environment sets them."""
    settings = settings if settings is not None else Settings()
    if "rate_limit_tiers" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"rate_limit_tiers": TIERS})


def build_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    send_token: TokenSender | None = None,
    sso: SsoConfig | None = None,
) -> FastAPI:
    """The app; it applies pending migrations (pgstack's and ours) before it reports started.

    `send_token` delivers sign-up verification and password-reset links (your mailer);
    `sso` (default: from AGENT_SSO_* variables) turns on `POST /auth/sso/okta`.
    """
    if database is None:
        database = Database(service_settings(settings))
    admins = [Depends(require_roles("admin"))]
    return create_app(
        database=database,
        title="agent-service",
        migrations=MigrationProject.from_pyproject(PROJECT),
        migrate=True,
        routers=[
            identity_router(send_token=send_token),
            sso_router(sso if sso is not None else SsoConfig.from_env()),
            tenancy_router(),
            conversations_router(),
            router,
            audit_router(dependencies=admins),
        ],
    )
