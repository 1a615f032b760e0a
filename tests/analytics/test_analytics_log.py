"""The query log as its users meet it: history pages, ranked search, bad input, tenants."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from pgstack.analytics import QueryAnalytics
from pgstack.db.database import Database
from pgstack.errors import InvalidInputError, TenantScopeError
from pgstack.orm import tenant_context

from .conftest import Org


async def test_history_is_per_user_newest_first_in_keyset_pages(
    org: Org, analytics: QueryAnalytics
) -> None:
    # proves: V2
    me, other = org.users[0], org.users[1]
    with tenant_context(org.a.id):
        for i in range(7):
            await analytics.log(me.id, f"question {i}", "search", "success", float(i))
            await analytics.log(other.id, f"theirs {i}", "search", "success", 1.0)
        first = await analytics.history(me.id, limit=3)
        assert [e.query_text for e in first] == ["question 6", "question 5", "question 4"]
        second = await analytics.history(me.id, limit=3, before_id=first[-1].id)
        assert [e.query_text for e in second] == ["question 3", "question 2", "question 1"]
        last = await analytics.history(me.id, limit=3, before_id=second[-1].id)
        assert [e.query_text for e in last] == ["question 0"]
    with tenant_context(org.b.id):
        assert await analytics.history(me.id) == []


async def test_search_matches_stems_and_ranks_the_closer_match_first(
    org: Org, analytics: QueryAnalytics
) -> None:
    # proves: V2
    user = org.users[0]
    with tenant_context(org.a.id):
        best = await analytics.log(user.id, "refund refunds refunded order", "search", "success", 1)
        some = await analytics.log(
            user.id, "where is my refund for the order", "chat", "success", 1
        )
        await analytics.log(user.id, "invoice address change", "search", "success", 1)
        policy = await analytics.log(
            org.users[1].id, "Refunding policy", "chat", "error", 1, error="x"
        )
        hits = await analytics.search("refunds")
        # "Refunding" has the same stem; the query naming it three times ranks first
        assert hits[0].entry.id == best.id
        assert {h.entry.id for h in hits} == {best.id, some.id, policy.id}
        ranks = [h.rank for h in hits]
        assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[1] > 0
        assert [h.entry.query_text for h in await analytics.search('"refunded order"')] == [
            best.query_text
        ]  # a phrase: the words next to each other
        assert len(await analytics.search("refund -order")) == 1
        mine = await analytics.search("refund", user_id=org.users[1].id)
        assert [h.entry.error for h in mine] == ["x"]
        # operators and quotes of every kind are search terms, never SQL or a syntax error
        for hostile in ("'; DROP TABLE query_logs; --", "& | ! ( ) :*", '"', "\\", "<->"):
            assert isinstance(await analytics.search(hostile), list)
    with tenant_context(org.b.id):
        assert await analytics.search("refund") == []


async def test_normalized_text_groups_the_same_query_typed_differently(
    org: Org, analytics: QueryAnalytics
) -> None:
    # proves: V2
    with tenant_context(org.a.id):
        for typed in ("Refund Status", "  refund\tstatus ", "REFUND \n STATUS", "refund"):
            await analytics.log(org.users[0].id, typed, "search", "success", 10)
        top = await analytics.popular()
        assert [(p.normalized_text, p.total) for p in top] == [("refund status", 3), ("refund", 1)]


async def test_bad_input_is_refused_with_a_clear_message(
    org: Org, analytics: QueryAnalytics
) -> None:
    # proves: V2
    user = org.users[0].id
    with tenant_context(org.a.id):
        for args in (
            ("", "search", "success", 1.0),
            ("x\x00y", "search", "success", 1.0),
            ("x" * 10_001, "search", "success", 1.0),
            ("ok", "", "success", 1.0),
            ("ok", "search", "fine", 1.0),
            ("ok", "search", "success", -1.0),
            ("ok", "search", "success", float("nan")),
            ("ok", "search", "success", float("inf")),
        ):
            with pytest.raises(InvalidInputError):
                await analytics.log(user, *args)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await analytics.search("")
        with pytest.raises(InvalidInputError):
            await analytics.popular(limit=0)
        with pytest.raises(InvalidInputError, match="time zone"):
            await analytics.daily_trends(zone="Mars/Olympus")
        with pytest.raises(InvalidInputError, match="time zone"):
            await analytics.popular(since=datetime(2026, 1, 1))  # naive
        now = datetime.now(UTC)
        with pytest.raises(InvalidInputError, match="before"):
            await analytics.latency(since=now, until=now - timedelta(days=1))
        with pytest.raises(InvalidInputError):
            await analytics.cleanup(timedelta(0))
    with pytest.raises(TenantScopeError):
        await analytics.log(user, "ok", "search", "success", 1.0)


async def test_daily_trends_follow_the_clock_of_the_zone(
    org: Org, analytics: QueryAnalytics, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    with tenant_context(org.a.id):
        entry = await analytics.log(org.users[0].id, "late", "search", "success", 5)
    # 23:30 UTC on 1 March is already 2 March in Tokyo
    await pgstack_migrated_db.run(
        text("UPDATE query_logs SET created_at = '2026-03-01 23:30:00+00' WHERE id = :id"),
        {"id": entry.id},
    )
    since, until = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    with tenant_context(org.a.id):
        utc = await analytics.daily_trends(since=since, until=until)
        tokyo = await analytics.daily_trends(since=since, until=until, zone="Asia/Tokyo")
    assert [(t.day.isoformat(), t.total) for t in utc] == [("2026-03-01", 1)]
    assert [(t.day.isoformat(), t.total) for t in tokyo] == [("2026-03-02", 1)]


async def test_two_cleanups_at_once_remove_each_old_entry_once(
    org: Org, analytics: QueryAnalytics, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    with tenant_context(org.a.id):
        await analytics.log_many(
            {
                "user_id": org.users[i % 5].id,
                "query_text": f"q{i}",
                "query_type": "search",
                "status": "success",
                "response_time_ms": 1.0,
                "created_at": datetime.now(UTC) - timedelta(days=100 if i < 300 else 1),
            }
            for i in range(400)
        )
    first, second = await asyncio.gather(
        analytics.cleanup(timedelta(days=30), batch_size=25),
        analytics.cleanup(timedelta(days=30), batch_size=25),
    )
    assert first + second == 300
    left = await pgstack_migrated_db.run(text("SELECT count(*) FROM query_logs"))
    assert left == [(100,)]


async def test_a_deleted_user_leaves_their_queries_in_the_figures(
    org: Org, analytics: QueryAnalytics, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    gone = org.users[4]
    with tenant_context(org.a.id):
        await analytics.log(gone.id, "bye", "search", "success", 3)
    await pgstack_migrated_db.run(text("DELETE FROM users WHERE id = :id"), {"id": gone.id})
    with tenant_context(org.a.id):
        top = await analytics.popular()
        assert [(p.normalized_text, p.total) for p in top] == [("bye", 1)]
        assert await analytics.history(gone.id) == []
        assert (await analytics.search("bye"))[0].entry.user_id is None
