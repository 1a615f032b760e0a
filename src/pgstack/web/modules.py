"""pgstack's module routers, and the app `pgstack serve` runs with them under `/v1`."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from uvicorn.importer import ImportFromStringError, import_from_string

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError
from pgstack.migrations.project import MigrationProject
from pgstack.web.analytics import analytics_router
from pgstack.web.app import create_app
from pgstack.web.audit import audit_router
from pgstack.web.conversations import conversations_router
from pgstack.web.dashboard import dashboard_router
from pgstack.web.identity import identity_router, require_roles
from pgstack.web.tenancy import tenancy_router
from pgstack.web.tokens import tokens_router

#: Where `pgstack serve` mounts the module routers (and the application's own).
API_PREFIX = "/v1"


def builtin_routers(admin_role: str = "admin", *, registration: bool = True) -> list[APIRouter]:
    """Identity (sign-up, sign-in, API keys, admin), tenants and their members, conversations
    and query analytics, the token vault's and the audit log's admin routes, `/admin/db`.

    The token and audit routes show credentials and every action, and the dashboard shows
    the database, so they need `admin_role`, like identity's admin routes.
    `registration=False` closes open sign-up.
    """
    admin = [Depends(require_roles(admin_role))]
    return [
        identity_router(admin_role=admin_role, registration=registration),
        tenancy_router(admin_role=admin_role),
        conversations_router(),
        analytics_router(),
        tokens_router(dependencies=admin),
        audit_router(dependencies=admin),
        dashboard_router(dependencies=admin),
    ]


def import_routers(spec: str, *, root: Path | None = None) -> list[APIRouter]:
    """The router(s) named by `module:attribute`, imported with `root` (default: the working
    directory) on `sys.path`, as uvicorn imports `module:app`.

    The attribute is an `APIRouter`, a sequence of them, or a function without arguments that
    returns either.
    """
    folder = str((root or Path.cwd()).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        found = import_from_string(spec)
    except ImportFromStringError as exc:
        raise ConfigurationError(
            f"--router {spec[:200]!r}: {exc}. Name a router as module:attribute, importable "
            f"from {folder}."
        ) from None
    what = "is"
    if inspect.isroutine(found):
        found, what = found(), "returned"
    if isinstance(found, APIRouter):
        return [found]
    expected = "a fastapi.APIRouter (or a list of them, or a function returning one)"
    got = type(found).__name__
    # A mapping or a string is iterable too: named as itself, not by its first key or letter.
    if not isinstance(found, Iterable) or isinstance(found, str | bytes | Mapping):
        raise ConfigurationError(f"--router {spec[:200]!r} {what} {got}, not {expected}.")
    routers = list(found)
    wrong = [(i, r) for i, r in enumerate(routers, 1) if not isinstance(r, APIRouter)]
    if wrong:
        index, item = wrong[0]
        raise ConfigurationError(
            f"--router {spec[:200]!r} {what} a {got} whose item {index} is "
            f"{type(item).__name__}, not a fastapi.APIRouter; give {expected}."
        )
    if not routers:
        raise ConfigurationError(f"--router {spec[:200]!r} {what} an empty {got}; give {expected}.")
    return routers


def service_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    migrations: MigrationProject | None = None,
    routers: Sequence[APIRouter] = (),
    monitor_interval: float | None = 30.0,
) -> FastAPI:
    """The app of `pgstack serve`: every module router, then `routers` (the application's),
    under `/v1`; probes, `/metrics`, `/docs` and `/openapi.json` at the root."""
    db = database if database is not None else Database(settings)
    return create_app(
        database=db,
        migrations=migrations,
        monitor_interval=monitor_interval,
        routers=[*builtin_routers(registration=db.settings.registration), *routers],
        prefix=API_PREFIX,
    )
