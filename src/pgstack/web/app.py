"""`create_app`: a FastAPI app whose lifespan connects and disconnects the database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.exceptions import HTTPException
from starlette.routing import Match
from swagger_ui_bundle import swagger_ui_path

import pgstack
from pgstack.config import Settings
from pgstack.db import health
from pgstack.db.database import Database
from pgstack.db.health import HealthMonitor, HealthReport
from pgstack.migrations.api import upgrade_async
from pgstack.migrations.health import install as install_migrations_check
from pgstack.migrations.project import MigrationProject
from pgstack.web import problems
from pgstack.web.audit import RequestContextMiddleware
from pgstack.web.deps import get_database
from pgstack.web.ratelimit import RateLimitPolicies


def _health_response(report: HealthReport) -> JSONResponse:
    return JSONResponse(
        report.to_dict(), status_code=report.http_status, media_type=health.MEDIA_TYPE
    )


class _HealthJSON(JSONResponse):
    media_type = health.MEDIA_TYPE


# The application/health+json body (draft-inadarei-api-health-check), as the probes send it.
_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "description", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
        "description": {"type": "string"},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["componentType", "status", "time"],
                    "properties": {
                        "componentType": {"type": "string"},
                        "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
                        "time": {"type": "string"},
                        "observedValue": {},  # a number, a revision, a flag
                        "observedUnit": {"type": "string"},
                        "output": {"type": "string"},
                    },
                },
            },
        },
    },
}
_HEALTH_CONTENT = {health.MEDIA_TYPE: {"schema": _HEALTH_SCHEMA}}
_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "pass or warn; the body says which checks warn.",
        "content": _HEALTH_CONTENT,
    },
    503: {
        "description": "The check failed; the body says which part.",
        "content": {**_HEALTH_CONTENT, **problems.PROBLEM_CONTENT},
    },
}
_METRICS_CONTENT = {
    media: {"schema": {"type": "string"}}
    for media in ("text/plain; version=0.0.4", "application/openmetrics-text; version=1.0.0")
}
router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Liveness: the process answers (no database access)",
    response_class=_HealthJSON,
    responses={200: _HEALTH_RESPONSES[200]},
)
async def liveness() -> JSONResponse:
    """Liveness probe."""
    return _health_response(health.liveness())


@router.get(
    "/ready",
    summary="Readiness: database round trip, pool, query performance",
    response_class=_HealthJSON,
    responses=_HEALTH_RESPONSES,
)
async def readiness(request: Request) -> JSONResponse:
    """Readiness probe."""
    monitor: HealthMonitor | None = request.app.state.pgstack_monitor
    db = get_database(request)
    report = await (monitor.check_now() if monitor is not None else db.health_check())
    return _health_response(report)


@router.get(
    "/startup",
    summary="Startup: the service finished starting",
    response_class=_HealthJSON,
    responses=_HEALTH_RESPONSES,
)
async def startup(request: Request) -> JSONResponse:
    """Startup probe."""
    return _health_response(
        health.startup(get_database(request), request.app.state.pgstack_started)
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["metrics"],
    response_class=PlainTextResponse,
    responses={200: {"description": "The metrics.", "content": _METRICS_CONTENT}},
)
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format, or OpenMetrics when the scraper's Accept asks."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), headers={"Content-Type": content_type})


_DOCS_ASSETS = "/docs/assets"


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at `/docs`, its files from the swagger-ui-bundle package: works offline."""
    app.mount(_DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_ASSETS}/favicon-32x32.png",
            # No badge fetched from the public validator service.
            swagger_ui_parameters={"validatorUrl": None},
        )


def create_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    monitor_interval: float | None = 30.0,
    title: str = "pgstack",
    migrations: MigrationProject | None = None,
    migrate: bool = False,
    routers: Sequence[APIRouter] = (),
    prefix: str = "",
) -> FastAPI:
    """A FastAPI app with pgstack's lifespan, health routes, `/metrics` and problem details.

    Without `database`, the app builds one from `settings` (read from the environment when
    not given). The lifespan connects the database if it is not connected yet, and then
    also disconnects it at shutdown; a database passed in already connected stays yours.

    With `migrations` (a `MigrationProject`), readiness includes the check "migrations":
    pass only at the head of pgstack's and the app's revisions. `migrate=True` also applies
    pending revisions in the lifespan, under the migration lock, before the app reports
    started (without `migrations`, the nearest pyproject.toml's `[tool.pgstack]` is used).

    `routers` are included after the health routes (pgstack's module routers, or yours),
    under `prefix` when given (`pgstack serve` uses "/v1"; the probes, `/metrics` and the
    docs stay at the root). With a prefix, a request for a route without it is a 404 whose
    detail names the path to use. `PGSTACK_CORS_ORIGINS` turns on CORS for those origins.
    """
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(f"prefix must start with '/' and not end with one, like '/v1': {prefix!r}")
    db = database if database is not None else Database(settings)
    RateLimitPolicies.from_settings(db.settings)  # a malformed tier limit fails here, at start
    project = migrations
    if project is None and migrate:
        project = MigrationProject.discover()
    if project is not None:
        install_migrations_check(db, project)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pgstack_started = False
        owns_db = not db.is_connected
        if owns_db:
            await db.connect()
        if migrate and project is not None:
            try:
                await upgrade_async(db.settings.with_url(db.url), project=project)
            except BaseException:
                if owns_db:
                    await db.disconnect()
                raise
        monitor = HealthMonitor(db, monitor_interval) if monitor_interval else None
        app.state.pgstack_monitor = monitor
        if monitor is not None:
            monitor.start()
        app.state.pgstack_started = True
        try:
            yield
        finally:
            app.state.pgstack_started = False
            if monitor is not None:
                await monitor.stop()
            if owns_db:
                await db.disconnect()

    docs = db.settings.docs
    app = FastAPI(
        title=title,
        version=pgstack.__version__,
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url=None,  # served below from the installed package, not a CDN
        redoc_url=None,
    )
    if docs:
        _serve_docs(app)
    app.state.pgstack_db = db
    app.state.pgstack_monitor = None
    app.state.pgstack_started = False
    problems.install(app, probes=router)
    app.add_middleware(RequestContextMiddleware, trusted_proxies=db.settings.trusted_proxies)
    _allow_cors(app, db.settings)
    app.include_router(router)
    for extra in routers:
        app.include_router(extra, prefix=prefix)
    if prefix:
        _point_to_prefix(app, prefix)
    return app


# What a browser script may send and read across origins: the headers pgstack's routes
# read, and the ones they answer with.
_CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "X-Request-ID", "X-Tenant-ID"]
_CORS_EXPOSED_HEADERS = ["X-Request-ID", "Location", "Retry-After", "RateLimit", "RateLimit-Policy"]


def _allow_cors(app: FastAPI, settings: Settings) -> None:
    """CORS for `PGSTACK_CORS_ORIGINS` (none: no CORS headers, browsers keep same-origin)."""
    if not settings.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=_CORS_REQUEST_HEADERS,
        expose_headers=_CORS_EXPOSED_HEADERS,
        max_age=settings.cors_max_age,
    )


def _point_to_prefix(app: FastAPI, prefix: str) -> None:
    """A 404 for a path that exists under `prefix` says so (the API moved there)."""

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if not path.startswith(f"{prefix}/"):
            scope = {**request.scope, "path": prefix + path}
            # A route there, or one there but for a malformed id (which it answers with 422).
            if any(
                route.matches(scope)[0] is not Match.NONE for route in app.routes
            ) or problems.malformed_ids(Request(scope)):
                return problems.problem_response(
                    404,
                    f"This API is served under {prefix}: send the request to {prefix}{path}.",
                    instance=path,
                )
        return await problems.http_error(request, exc)

    app.add_exception_handler(404, not_found)
