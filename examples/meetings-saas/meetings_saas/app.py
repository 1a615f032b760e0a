"""The service: pgstack's app (lifespan, probes, metrics, problem details) plus our routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from meetings_saas.api import installs, workspace
from pgstack import Database, Settings
from pgstack.migrations import MigrationProject
from pgstack.web import create_app
from pgstack.web.identity import identity_router
from pgstack.web.tenancy import tenancy_router

PROJECT = Path(__file__).resolve().parents[1]


def build_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """The app; it applies pending migrations (pgstack's and ours) before it reports started.

    pgstack's tenancy routes manage the workspaces' users: `GET /tenants` (mine),
    invitations, roles (`/tenants/{id}/members`), and the operators' `/admin/tenants`.
    """
    return create_app(
        settings,
        database=database,
        title="meetings-saas",
        migrations=MigrationProject.from_pyproject(PROJECT),
        migrate=True,
        routers=[identity_router(), tenancy_router(), installs, workspace],
    )
