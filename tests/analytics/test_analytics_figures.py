"""Analytics figures over a generated log of 100,000 queries equal Python's own computation."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from pgstack.analytics import QueryAnalytics
from pgstack.db.database import Database
from pgstack.orm import tenant_context

from .conftest import Org

PHRASES = [
    f"{w} {v}"
    for w in ("refund", "invoice", "login", "export", "billing")
    for v in (
        "status",
        "help",
        "error",
        "report",
        "history",
        "limit",
        "api",
        "team",
        "slack",
        "plan",
    )
]
TYPES = ("search", "chat", "sql", "lookup")
N = 100_000


def normalize(query: str) -> str:
    return " ".join(query.split()).lower()


def percentile_cont(values: list[float], p: float) -> float:
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def generate(org: Org, now: datetime, seed: int = 15) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(N):
        phrase = rng.choice(PHRASES)
        # the same query typed differently: case and white space vary, the normalized text not
        words = [w.upper() if rng.random() < 0.2 else w for w in phrase.split()]
        query = rng.choice(("", " ", "\t")) + rng.choice((" ", "  ", "\t", " \n ")).join(words)
        status = rng.choices(("success", "error", "timeout"), (90, 7, 3))[0]
        # 0 to 120 days old, none within a minute of the 90-day retention line
        age = rng.uniform(0, 120 * 86400)
        if abs(age - 90 * 86400) < 60:
            age += 120
        rows.append(
            {
                "user_id": rng.choice(org.users).id,
                "query_text": query,
                "query_type": rng.choice(TYPES),
                "status": status,
                "response_time_ms": round(rng.lognormvariate(4, 0.8), 3),
                "error": "upstream timed out" if status != "success" else None,
                "created_at": now - timedelta(seconds=age),
            }
        )
    return rows


async def test_figures_equal_python_over_a_hundred_thousand_queries(
    org: Org, analytics: QueryAnalytics, pgstack_migrated_db: Database
) -> None:
    # proves: V2
    now = datetime.now(UTC).replace(microsecond=0)
    rows = generate(org, now)
    with tenant_context(org.a.id):
        assert await analytics.log_many(rows) == N
    with tenant_context(org.b.id):  # another tenant's log stays out of A's figures
        other = generate(org, now, seed=99)[:2000]
        await analytics.log_many(other)

    since, until = now - timedelta(days=60), now - timedelta(days=1)
    window = [r for r in rows if since <= r["created_at"] < until]
    assert 40_000 < len(window) < 60_000

    with tenant_context(org.a.id):
        popular = await analytics.popular(since=since, until=until, limit=50)
        latency = await analytics.latency(since=since, until=until)
        trends = await analytics.daily_trends(since=since, until=until)
        typed = await analytics.popular(since=since, until=until, query_type="sql", limit=5)

    counts = Counter(normalize(r["query_text"]) for r in window)
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(p.normalized_text, p.total) for p in popular] == expected
    assert len(popular) == len(PHRASES)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in window:
        groups[normalize(r["query_text"])].append(r)
    for p in popular:
        group = groups[p.normalized_text]
        mean = sum(r["response_time_ms"] for r in group) / len(group)
        assert math.isclose(p.avg_ms, mean, rel_tol=1e-9)
        assert p.users == len({r["user_id"] for r in group})
        assert p.last_seen == max(r["created_at"] for r in group)
    sql_counts = Counter(normalize(r["query_text"]) for r in window if r["query_type"] == "sql")
    assert [(p.normalized_text, p.total) for p in typed] == sorted(
        sql_counts.items(), key=lambda kv: (-kv[1], kv[0])
    )[:5]

    by_type: dict[str, list[float]] = defaultdict(list)
    for r in window:
        by_type[r["query_type"]].append(r["response_time_ms"])
    assert [entry.query_type for entry in latency] == sorted(TYPES)
    for entry in latency:
        values = by_type[entry.query_type]
        assert entry.total == len(values)
        for p, got in ((0.5, entry.p50), (0.95, entry.p95), (0.99, entry.p99)):
            assert math.isclose(got, percentile_cont(values, p), rel_tol=1e-12)
        assert entry.p50 < entry.p95 < entry.p99

    days: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in window:
        days[r["created_at"].date()].append(r)
    assert [t.day for t in trends] == sorted(days)
    for t in trends:
        day = days[t.day]
        assert t.total == len(day)
        assert t.failures == sum(r["status"] != "success" for r in day)
        assert t.users == len({r["user_id"] for r in day})
        assert math.isclose(t.avg_ms, sum(r["response_time_ms"] for r in day) / len(day))

    # cleanup: exactly the entries older than 90 days go, in every tenant
    cutoff = now - timedelta(days=90)
    old_a = sum(r["created_at"] < cutoff for r in rows)
    old_b = sum(r["created_at"] < cutoff for r in other)
    removed = await analytics.cleanup(timedelta(days=90), batch_size=7000)
    left = await pgstack_migrated_db.run(
        text("SELECT tenant_id, count(*), min(created_at) FROM query_logs GROUP BY tenant_id")
    )
    by_tenant = {t: (n, oldest) for t, n, oldest in left}
    assert by_tenant[org.a.id][0] == N - old_a
    assert by_tenant[org.a.id][1] >= cutoff
    assert by_tenant[org.b.id][0] == len(other) - old_b
    assert removed == old_a + old_b
    assert await analytics.cleanup(timedelta(days=90)) == 0
