"""The text search configuration of the query log, and the indexes its time-range reads use."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from pgstack.analytics import QueryAnalytics
from pgstack.analytics import service as analytics_service
from pgstack.db.database import Database
from pgstack.errors import InvalidInputError
from pgstack.orm import tenant_context
from pgstack.web.analytics import analytics_router

from .conftest import Org


async def test_entries_are_searched_with_the_configuration_they_were_logged_with(
    org: Org, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    db = pgstack_migrated_db
    english = QueryAnalytics(db)
    french = QueryAnalytics(db, text_search_config="french")
    simple = QueryAnalytics(db, text_search_config="pg_catalog.simple")
    user = org.users[0].id
    with tenant_context(org.a.id):
        en = await english.log(user, "refunding orders", "search", "success", 1)
        fr = await french.log(user, "remboursements des commandes", "search", "success", 1)
        # 150 rows: COPY, which takes the configuration from the transaction's setting
        bulk = [
            {
                "user_id": user,
                "query_text": f"factures impayées {i}",
                "query_type": "search",
                "status": "success",
                "response_time_ms": 1.0,
            }
            for i in range(150)
        ]
        assert await french.log_many(bulk) == 150
        # French stems: "remboursement" finds "remboursements", "facture" the 150 invoices
        assert [h.entry.id for h in await french.search("remboursement")] == [fr.id]
        assert len(await french.search("facture", limit=500)) == 150
        # English stems: "refund" finds "refunding"
        assert [h.entry.id for h in await english.search("refund")] == [en.id]
        # simple keeps words whole: its entry holds "refunding", the English one "refund"
        plain = await simple.log(user, "Refunding Orders", "search", "success", 1)
        assert [h.entry.id for h in await simple.search("refunding")] == [plain.id]
        assert [h.entry.id for h in await english.search("refunding")] == [en.id]
    configs = await db.run(
        text("SELECT text_search_config::text, count(*) FROM query_logs GROUP BY 1 ORDER BY 1")
    )
    assert configs == [("english", 1), ("french", 151), ("simple", 1)]
    # the next transaction on the pool is back to the default
    with tenant_context(org.a.id):
        await english.log_many([{**bulk[0], "query_text": "plain"}] * 120)
    assert (
        await db.run(
            text("SELECT count(*) FROM query_logs WHERE text_search_config = 'english'::regconfig")
        )
    )[0][0] == 121


async def test_a_configuration_the_server_lacks_or_a_hostile_name_is_refused(
    org: Org, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    db = pgstack_migrated_db
    with tenant_context(org.a.id):
        klingon = QueryAnalytics(db, text_search_config="klingon")
        with pytest.raises(
            InvalidInputError, match=r"no text search configuration 'klingon'.*english"
        ):
            await klingon.log(org.users[0].id, "qapla", "search", "success", 1)
        with pytest.raises(InvalidInputError, match="klingon"):
            await klingon.search("qapla")
        with pytest.raises(InvalidInputError, match=r"'public\.english'"):
            await QueryAnalytics(db, text_search_config="public.english").search("x")
    for hostile in (
        "english'; DROP TABLE query_logs; --",
        "English",
        "",
        "a.b.c",
        "english\x00",
        "x" * 64,
        42,
    ):
        with pytest.raises(InvalidInputError, match="text_search_config"):
            QueryAnalytics(db, text_search_config=hostile)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            analytics_router(text_search_config=hostile)  # type: ignore[arg-type]
    rows = await db.run(text("SELECT count(*) FROM query_logs"))
    assert rows == [(0,)]


def _index_names(plan: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Index Name" in plan:
            found.add(plan["Index Name"])
        if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") == "query_logs":
            found.add("SEQ SCAN")
        for value in plan.values():
            found |= _index_names(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _index_names(value)
    return found


async def test_time_range_reads_and_cleanup_use_the_tenant_time_index(
    org: Org, analytics: QueryAnalytics, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    db = pgstack_migrated_db
    now = datetime.now(UTC)
    rng = random.Random(15)

    def rows(n: int) -> list[dict[str, Any]]:
        return [
            {
                "user_id": rng.choice(org.users).id,
                "query_text": f"refund status {rng.randrange(500)}",
                "query_type": rng.choice(("search", "chat")),
                "status": "success",
                "response_time_ms": rng.uniform(1, 500),
                "created_at": now - timedelta(seconds=rng.uniform(0, 120 * 86400)),
            }
            for _ in range(n)
        ]

    for tenant in (org.a.id, org.b.id):
        with tenant_context(tenant):
            await analytics.log_many(rows(20_000))
    await db.run(text("ANALYZE query_logs"))

    day = {"since": now - timedelta(days=3), "until": now - timedelta(days=2)}
    params: dict[str, Any] = {"tenant_id": org.a.id, "limit": 10, **day}
    reads = {
        "popular": (analytics_service._POPULAR, {"query_type": None}),
        "daily": (analytics_service._DAILY, {"zone": "UTC"}),
        "latency": (analytics_service._LATENCY, {}),
        "search": (
            analytics_service._SEARCH,
            {"terms": "refund", "config": "english", "user_id": None},
        ),
        "cleanup": (
            analytics_service._CLEANUP,
            {"cutoff": now - timedelta(days=119), "batch": 500},
        ),
    }
    with tenant_context(org.a.id):
        async with db.transaction() as session:
            for name, (statement, extra) in reads.items():
                sql = "EXPLAIN (FORMAT JSON) " + statement.element.text
                plan = (await session.execute(text(sql), {**params, **extra})).scalar_one()
                used = _index_names(plan if isinstance(plan, list) else json.loads(plan))
                assert "SEQ SCAN" not in used, (name, used)
                assert "ix_query_logs_tenant_id_created_at" in used, (name, used)
