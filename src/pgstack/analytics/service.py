"""`QueryAnalytics`: log the queries users run, then read figures about them, all in SQL.

Every figure is one statement over a time range `[since, until)` of the current tenant's log
(`tenant_context`; row-level security holds the table to it too): popular queries by their
normalized text, daily trends, latency percentiles per type (`percentile_cont`), full-text
search ranked by `ts_rank_cd`. Old entries go in batches (`cleanup`).
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Interval, TextualSelect, bindparam, text

from pgstack.analytics.models import CONFIG_SETTING, STATUSES, TEXT_SEARCH_CONFIG, QueryLog
from pgstack.db.database import Database
from pgstack.db.tenant import each_tenant, tenant_value
from pgstack.errors import InvalidInputError, TenantScopeError
from pgstack.orm.types import UTCDateTime
from pgstack.repository import Repository

#: The most rows a list answer holds.
MAX_LIMIT = 1000
#: The longest query text kept; longer texts are refused (InvalidInputError).
MAX_QUERY_LENGTH = 10_000
#: The range figures cover when the caller names none: the last 30 days.
DEFAULT_PERIOD = timedelta(days=30)

_ENTRY_COLUMNS = (
    "id, user_id, tenant_id, query_text, normalized_text, query_type, status, "
    "response_time_ms, error, created_at"
)
_AT = {"created_at": UTCDateTime()}
_RANGE = "tenant_id = :tenant_id AND created_at >= :since AND created_at < :until"


def _sql(sql: str, columns: Mapping[str, Any] | None = None, **binds: Any) -> TextualSelect:
    params = [bindparam(name, type_=type_) for name, type_ in binds.items()]
    return text(sql).bindparams(*params).columns(**(columns or {}))


_LOG = _sql(
    "INSERT INTO query_logs (tenant_id, user_id, query_text, query_type, status, "
    "response_time_ms, error, text_search_config) VALUES (:tenant_id, :user_id, :query_text, "
    ":query_type, :status, :response_time_ms, :error, CAST(:text_search_config AS regconfig)) "
    f"RETURNING {_ENTRY_COLUMNS}",
    _AT,
)
# Newest first; keyset on (created_at, id) from the entry `before` names.
_HISTORY = _sql(
    f"SELECT {_ENTRY_COLUMNS} FROM query_logs WHERE tenant_id = :tenant_id "
    "AND user_id = :user_id AND (CAST(:before AS bigint) IS NULL OR (created_at, id) < "
    "(SELECT created_at, id FROM query_logs WHERE id = :before)) "
    "ORDER BY created_at DESC, id DESC LIMIT :limit",
    _AT,
)
_SEARCH = _sql(
    f"SELECT {_ENTRY_COLUMNS}, ts_rank_cd(search_vector, q) AS rank "
    "FROM query_logs, websearch_to_tsquery(CAST(:config AS regconfig), :terms) AS q "
    f"WHERE {_RANGE} AND search_vector @@ q "
    "AND (CAST(:user_id AS uuid) IS NULL OR user_id = :user_id) "
    "ORDER BY rank DESC, created_at DESC, id DESC LIMIT :limit",
    _AT,
)
_POPULAR = _sql(
    "SELECT normalized_text, count(*) AS total, avg(response_time_ms) AS avg_ms, "
    "count(DISTINCT user_id) AS users, max(created_at) AS last_seen "
    f"FROM query_logs WHERE {_RANGE} "
    "AND (CAST(:query_type AS text) IS NULL OR query_type = :query_type) "
    "GROUP BY normalized_text ORDER BY total DESC, normalized_text LIMIT :limit",
    {"last_seen": UTCDateTime()},
)
_DAILY = _sql(
    "SELECT (created_at AT TIME ZONE :zone)::date AS day, count(*) AS total, "
    "count(*) FILTER (WHERE status <> 'success') AS failures, "
    "avg(response_time_ms) AS avg_ms, count(DISTINCT user_id) AS users "
    f"FROM query_logs WHERE {_RANGE} GROUP BY day ORDER BY day",
)
_LATENCY = _sql(
    "SELECT query_type, count(*) AS total, percentile_cont(ARRAY[0.5, 0.95, 0.99]) "
    "WITHIN GROUP (ORDER BY response_time_ms) AS p FROM query_logs "
    f"WHERE {_RANGE} GROUP BY query_type ORDER BY query_type",
)
_CUTOFF = _sql("SELECT now() - :age AS cutoff", {"cutoff": UTCDateTime()}, age=Interval())
# SKIP LOCKED: cleanups running at once share the rows instead of waiting on each other. The
# tenant is named as well as held by row-level security: a role that bypasses it (the owner
# of a database without FORCE, a superuser) still reads the (tenant_id, created_at) index.
_CLEANUP = _sql(
    "WITH gone AS (DELETE FROM query_logs WHERE id IN (SELECT id FROM query_logs "
    "WHERE tenant_id = :tenant_id AND created_at < :cutoff ORDER BY created_at LIMIT :batch "
    "FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone",
    cutoff=UTCDateTime(),
)
_SET_CONFIG = _sql(f"SELECT set_config('{CONFIG_SETTING}', :config, true)")
# The configurations a name may mean: unqualified, those on the search path.
_CONFIG = _sql(
    "SELECT c.oid::regconfig::text FROM pg_ts_config c JOIN pg_namespace n "
    "ON n.oid = c.cfgnamespace WHERE c.cfgname = :name "
    "AND (n.nspname = :schema OR (CAST(:schema AS text) IS NULL "
    "AND pg_ts_config_is_visible(c.oid)))"
)
_CONFIGS = _sql(
    "SELECT string_agg(cfgname, ', ' ORDER BY cfgname) FROM pg_ts_config "
    "WHERE pg_ts_config_is_visible(oid)"
)
_CONFIG_NAME = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,62})")
# The configurations each Database's server was found to have: checked once per name.
_KNOWN_CONFIGS: weakref.WeakKeyDictionary[Database, set[str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class QueryEntry:
    """One logged query."""

    id: int
    user_id: uuid.UUID | None
    tenant_id: uuid.UUID
    query_text: str
    normalized_text: str
    query_type: str
    status: str
    response_time_ms: float
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class SearchHit:
    """A logged query that matched a search, with its rank (higher is better)."""

    entry: QueryEntry
    rank: float


@dataclass(frozen=True)
class PopularQuery:
    """A normalized query text, how often it ran in the period, and how fast on average."""

    normalized_text: str
    total: int
    avg_ms: float
    users: int
    last_seen: datetime


@dataclass(frozen=True)
class DailyTrend:
    """One day of the period: queries, failures (any status but success), mean time, users."""

    day: date
    total: int
    failures: int
    avg_ms: float
    users: int


@dataclass(frozen=True)
class Latency:
    """Response-time percentiles of one query type, in milliseconds (`percentile_cont`)."""

    query_type: str
    total: int
    p50: float
    p95: float
    p99: float


class QueryAnalytics:
    """The query log of the current tenant, and the figures read from it.

    analytics = QueryAnalytics(db)
    with tenant_context(tenant_id):
        await analytics.log(user_id, "refund status", "search", "success", 42.0)
        top = await analytics.popular(limit=10)
    """

    def __init__(self, db: Database, *, text_search_config: str = TEXT_SEARCH_CONFIG) -> None:
        self.db = db
        self.text_search_config = text_search_config_name(text_search_config)

    def __repr__(self) -> str:
        return f"QueryAnalytics(text_search_config={self.text_search_config!r})"

    # -- writing -----------------------------------------------------------------------------

    async def log(
        self,
        user_id: uuid.UUID | None,
        query_text: str,
        query_type: str,
        status: str,
        response_time_ms: float,
        *,
        error: str | None = None,
    ) -> QueryEntry:
        """Record one query; the normalized text and search vector are computed by PostgreSQL."""
        row = self._entry_row(user_id, query_text, query_type, status, response_time_ms, error)
        row["text_search_config"] = await self._config()
        rows = await self.db.run(_LOG, row)
        return QueryEntry(*rows[0])

    async def log_many(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Record many queries in one transaction (COPY for large batches); how many.

        Each entry has the keys of `log` (`user_id`, `query_text`, `query_type`, `status`,
        `response_time_ms`, optionally `error`) and may give `created_at` (imports).
        """
        config = await self._config()
        rows = []
        for entry in entries:
            row = self._entry_row(
                entry.get("user_id"),
                entry.get("query_text"),  # type: ignore[arg-type]
                entry.get("query_type"),  # type: ignore[arg-type]
                entry.get("status"),  # type: ignore[arg-type]
                entry.get("response_time_ms"),  # type: ignore[arg-type]
                entry.get("error"),
            )
            if entry.get("created_at") is not None:
                row["created_at"] = entry["created_at"]
            rows.append(row)
        async with self.db.transaction() as session:
            # The column's default reads it: COPY cannot carry a regconfig value itself.
            await session.execute(_SET_CONFIG, {"config": config})
            return await Repository(session, QueryLog).create_many(rows)

    # -- reading -----------------------------------------------------------------------------

    async def history(
        self, user_id: uuid.UUID, *, limit: int = 50, before_id: int | None = None
    ) -> list[QueryEntry]:
        """The user's queries, newest first; the next page starts `before_id=` the last id."""
        params = {**self._tenant(), "user_id": user_id, "before": before_id}
        params["limit"] = _limit(limit)
        return [QueryEntry(*row) for row in await self.db.run(_HISTORY, params)]

    async def search(
        self,
        terms: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: uuid.UUID | None = None,
        limit: int = 20,
    ) -> list[SearchHit]:
        """Logged queries matching `terms` (web search syntax: words, "phrases", -not, or).

        The terms are parsed with this instance's `text_search_config`: entries logged with
        the same configuration match by their stems. Ranked by `ts_rank_cd`, best first; ties
        newest first.
        """
        if not isinstance(terms, str) or not terms.strip() or len(terms) > 1000:
            raise InvalidInputError("Search terms must be 1 to 1000 characters of text.")
        params = {**self._range(since, until), "terms": terms, "user_id": user_id}
        params["config"] = await self._config()
        params["limit"] = _limit(limit)
        rows = await self.db.run(_SEARCH, params)
        return [SearchHit(QueryEntry(*row[:-1]), float(row[-1])) for row in rows]

    async def popular(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        query_type: str | None = None,
        limit: int = 10,
    ) -> list[PopularQuery]:
        """The most frequent queries of the period by normalized text; ties alphabetical."""
        params = {**self._range(since, until), "query_type": query_type}
        params["limit"] = _limit(limit)
        rows = await self.db.run(_POPULAR, params)
        return [PopularQuery(r[0], r[1], float(r[2]), r[3], r[4]) for r in rows]

    async def daily_trends(
        self, *, since: datetime | None = None, until: datetime | None = None, zone: str = "UTC"
    ) -> list[DailyTrend]:
        """One line per day of the period that has queries; days as on the clock of `zone`."""
        try:
            ZoneInfo(zone)
        except (ValueError, TypeError, ZoneInfoNotFoundError):
            raise InvalidInputError(
                "zone must be an IANA time zone name, such as Europe/Paris."
            ) from None
        params = {**self._range(since, until), "zone": zone}
        rows = await self.db.run(_DAILY, params)
        return [DailyTrend(r[0], r[1], r[2], float(r[3]), r[4]) for r in rows]

    async def latency(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[Latency]:
        """p50, p95 and p99 response times per query type over the period, computed in SQL."""
        rows = await self.db.run(_LATENCY, self._range(since, until))
        return [Latency(r[0], r[1], *(float(p) for p in r[2])) for r in rows]

    # -- maintenance -------------------------------------------------------------------------

    async def cleanup(self, older_than: timedelta, *, batch_size: int = 5000) -> int:
        """Delete entries older than `older_than`, in batches; how many went.

        The cut-off is fixed once, by the database clock, when the cleanup starts. Inside
        `tenant_context`, that tenant's entries; outside, every tenant's in turn.
        """
        if older_than <= timedelta(0):
            raise InvalidInputError("older_than must be a positive duration, such as 90 days.")
        if batch_size < 1:
            raise InvalidInputError("batch_size must be 1 or more.")
        cutoff = (await self.db.run(_CUTOFF, {"age": older_than}))[0][0]

        async def clean(tenant_id: uuid.UUID) -> int:
            params = {"tenant_id": tenant_id, "cutoff": cutoff, "batch": batch_size}
            removed = 0
            while True:
                gone: int = (await self.db.run(_CLEANUP, params))[0][0]
                removed += gone
                if gone < batch_size:
                    return removed

        # Every entry belongs to a tenant of `tenants` (a foreign key): visit each in turn.
        return sum(await each_tenant(self.db, clean))

    # -- helpers -----------------------------------------------------------------------------

    async def _config(self) -> str:
        """The instance's text search configuration, once found on the server."""
        name = self.text_search_config
        known = _KNOWN_CONFIGS.setdefault(self.db, set())
        if name in known:
            return name
        match = _CONFIG_NAME.fullmatch(name)
        assert match is not None  # checked in __init__
        schema, bare = match.groups()
        if not await self.db.run(_CONFIG, {"name": bare, "schema": schema}):
            available = (await self.db.run(_CONFIGS))[0][0] or "none"
            raise InvalidInputError(
                f"This PostgreSQL server has no text search configuration {name!r}; it has: "
                f"{available}. Pass one of those as text_search_config."
            )
        known.add(name)
        return name

    def _entry_row(
        self,
        user_id: uuid.UUID | None,
        query_text: str,
        query_type: str,
        status: str,
        response_time_ms: float,
        error: str | None,
    ) -> dict[str, Any]:
        if not isinstance(query_text, str) or not query_text.strip():
            raise InvalidInputError("query_text must be the text of the query, not empty.")
        if len(query_text) > MAX_QUERY_LENGTH or "\x00" in query_text:
            raise InvalidInputError(
                f"query_text must be at most {MAX_QUERY_LENGTH} characters, without NUL."
            )
        if (
            not isinstance(query_type, str)
            or not 1 <= len(query_type) <= 64
            or "\x00" in query_type
        ):
            raise InvalidInputError("query_type must be a name of 1 to 64 characters.")
        if status not in STATUSES:
            raise InvalidInputError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
        if (
            isinstance(response_time_ms, bool)
            or not isinstance(response_time_ms, int | float)
            or not 0 <= response_time_ms < float("inf")
        ):
            raise InvalidInputError("response_time_ms must be a number of milliseconds, >= 0.")
        if error is not None and (not isinstance(error, str) or "\x00" in error):
            raise InvalidInputError("error must be text without NUL characters.")
        return {
            **self._tenant(),
            "user_id": user_id,
            "query_text": query_text,
            "query_type": query_type,
            "status": status,
            "response_time_ms": float(response_time_ms),
            "error": error,
        }

    @staticmethod
    def _tenant() -> dict[str, Any]:
        tenant = tenant_value()
        if tenant is None:
            raise TenantScopeError(
                "The query log belongs to a tenant: call this inside tenant_context(tenant_id)."
            )
        return {"tenant_id": uuid.UUID(tenant)}

    def _range(self, since: datetime | None, until: datetime | None) -> dict[str, Any]:
        for name, value in (("since", since), ("until", until)):
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise InvalidInputError(f"{name} must be a datetime with a time zone.")
        end = until or datetime.now(UTC)
        start = since or end - DEFAULT_PERIOD
        if start >= end:
            raise InvalidInputError("since must be before until.")
        return {**self._tenant(), "since": start, "until": end}


def text_search_config_name(name: str) -> str:
    """`name` if it can name a text search configuration; InvalidInputError otherwise.

    Whether the server has it is checked on first use, against `pg_ts_config`; the name only
    ever reaches SQL as a parameter cast to `regconfig`.
    """
    if not isinstance(name, str) or not _CONFIG_NAME.fullmatch(name):
        raise InvalidInputError(
            "text_search_config must name a text search configuration, such as english, "
            "french or simple (lower-case letters, digits and _, optionally schema.name)."
        )
    return name


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}.")
    return limit
