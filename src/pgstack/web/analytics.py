"""Routes for query analytics: members log and read their own queries, tenant admins the rest.

Every route runs in the request's tenant (`TenantAccessDep`: membership checked, rate limit
counted). Figures, search and other users' history need the tenant role `admin_role`.

    app = create_app(routers=[identity_router(), tenancy_router(), analytics_router()])
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from pgstack.analytics import (
    MAX_LIMIT,
    DailyTrend,
    Latency,
    PopularQuery,
    QueryAnalytics,
    QueryEntry,
)
from pgstack.analytics.models import TEXT_SEARCH_CONFIG
from pgstack.analytics.service import MAX_QUERY_LENGTH, text_search_config_name
from pgstack.db.database import Database
from pgstack.web.deps import DatabaseDep, Timestamp
from pgstack.web.tenancy import TenantAccessDep, require_tenant_role

_Since = Annotated[Timestamp | None, Query(description="Start of the period (inclusive).")]
_Until = Annotated[Timestamp | None, Query(description="End of the period (exclusive).")]
_Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    query_text: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)]
    query_type: Annotated[str, Field(min_length=1, max_length=64)]
    status: Literal["success", "error", "timeout", "cancelled"]
    # strict: a boolean or a numeric string is not a time (lax mode read false as 0).
    response_time_ms: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
    error: Annotated[str | None, Field(max_length=10_000)] = None


class QueryOut(BaseModel):
    id: int
    user_id: uuid.UUID | None
    query_text: str
    normalized_text: str
    query_type: str
    status: str
    response_time_ms: float
    error: str | None
    created_at: datetime


class SearchHitOut(BaseModel):
    entry: QueryOut
    rank: float


class PopularOut(BaseModel):
    normalized_text: str
    total: int
    avg_ms: float
    users: int
    last_seen: datetime


class TrendOut(BaseModel):
    day: date
    total: int
    failures: int
    avg_ms: float
    users: int


class LatencyOut(BaseModel):
    query_type: str
    total: int
    p50: float
    p95: float
    p99: float


def _entry(e: QueryEntry) -> QueryOut:
    return QueryOut(
        id=e.id,
        user_id=e.user_id,
        query_text=e.query_text,
        normalized_text=e.normalized_text,
        query_type=e.query_type,
        status=e.status,
        response_time_ms=e.response_time_ms,
        error=e.error,
        created_at=e.created_at,
    )


def _popular(p: PopularQuery) -> PopularOut:
    return PopularOut(
        normalized_text=p.normalized_text,
        total=p.total,
        avg_ms=p.avg_ms,
        users=p.users,
        last_seen=p.last_seen,
    )


def _trend(t: DailyTrend) -> TrendOut:
    return TrendOut(day=t.day, total=t.total, failures=t.failures, avg_ms=t.avg_ms, users=t.users)


def _latency(x: Latency) -> LatencyOut:
    return LatencyOut(query_type=x.query_type, total=x.total, p50=x.p50, p95=x.p95, p99=x.p99)


def analytics_router(
    *,
    prefix: str = "/analytics",
    admin_role: str = "admin",
    text_search_config: str = TEXT_SEARCH_CONFIG,
) -> APIRouter:
    """The query log's routes; figures and search need the tenant role `admin_role`.

    Queries are logged, and searched, with `text_search_config` (a configuration of the
    server's `pg_ts_config`: english, french, simple, ...).
    """
    config = text_search_config_name(text_search_config)
    router = APIRouter(prefix=prefix, tags=["analytics"])

    def service(db: Database) -> QueryAnalytics:
        return QueryAnalytics(db, text_search_config=config)

    # The figures: the same tenant access, checked for the admin role first.
    admin = APIRouter(dependencies=[Depends(require_tenant_role(admin_role))])

    @router.post("/queries", status_code=201)
    async def log_query(body: QueryIn, access: TenantAccessDep, db: DatabaseDep) -> QueryOut:
        entry = await service(db).log(
            access.principal.user.id,
            body.query_text,
            body.query_type,
            body.status,
            body.response_time_ms,
            error=body.error,
        )
        return _entry(entry)

    @router.get("/queries/mine")
    async def my_history(
        access: TenantAccessDep,
        db: DatabaseDep,
        limit: _Limit = 50,
        before_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[QueryOut]:
        entries = await service(db).history(
            access.principal.user.id, limit=limit, before_id=before_id
        )
        return [_entry(e) for e in entries]

    @admin.get("/users/{user_id}/queries")
    async def user_history(
        user_id: uuid.UUID,
        access: TenantAccessDep,
        db: DatabaseDep,
        limit: _Limit = 50,
        before_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[QueryOut]:
        entries = await service(db).history(user_id, limit=limit, before_id=before_id)
        return [_entry(e) for e in entries]

    @admin.get("/search")
    async def search(
        access: TenantAccessDep,
        db: DatabaseDep,
        q: Annotated[str, Query(min_length=1, max_length=1000)],
        since: _Since = None,
        until: _Until = None,
        user_id: uuid.UUID | None = None,
        limit: _Limit = 20,
    ) -> list[SearchHitOut]:
        hits = await service(db).search(q, since=since, until=until, user_id=user_id, limit=limit)
        return [SearchHitOut(entry=_entry(h.entry), rank=h.rank) for h in hits]

    @admin.get("/popular")
    async def popular(
        access: TenantAccessDep,
        db: DatabaseDep,
        since: _Since = None,
        until: _Until = None,
        query_type: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        limit: _Limit = 10,
    ) -> list[PopularOut]:
        rows = await service(db).popular(
            since=since, until=until, query_type=query_type, limit=limit
        )
        return [_popular(p) for p in rows]

    @admin.get("/trends")
    async def trends(
        access: TenantAccessDep,
        db: DatabaseDep,
        since: _Since = None,
        until: _Until = None,
        zone: Annotated[str, Query(min_length=1, max_length=64)] = "UTC",
    ) -> list[TrendOut]:
        rows = await service(db).daily_trends(since=since, until=until, zone=zone)
        return [_trend(t) for t in rows]

    @admin.get("/latency")
    async def latency(
        access: TenantAccessDep, db: DatabaseDep, since: _Since = None, until: _Until = None
    ) -> list[LatencyOut]:
        return [_latency(x) for x in await service(db).latency(since=since, until=until)]

    router.include_router(admin)
    return router
