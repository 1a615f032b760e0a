"""The query log over HTTP: every search is logged; the figures match a Python computation."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

SEARCHES = {
    "ada@example.com": ["refund status", "Refund   STATUS", "export invoices", "holidays"],
    "bob@example.com": ["refund status", "  refund status ", "vpn setup"],
    "cy@example.com": ["refund status", "vpn setup", "vpn SETUP", "holidays", "expenses"],
}


@pytest.fixture
async def searched(client: httpx.AsyncClient, sign_in) -> dict[str, list[dict]]:
    """Each user's searches, run over HTTP; what each user's history then says."""
    histories: dict[str, list[dict]] = {}
    for email, texts in SEARCHES.items():
        _, headers = await sign_in(email)
        for text in texts:
            assert (
                await client.get("/search", params={"q": text}, headers=headers)
            ).status_code == 200
        mine = await client.get("/me/queries", params={"limit": 100}, headers=headers)
        assert mine.status_code == 200, mine.text
        histories[email] = mine.json()
    return histories


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


async def test_each_user_sees_their_own_searches_newest_first(searched) -> None:
    # proves: X4, V2 (per-user history)
    for email, texts in SEARCHES.items():
        assert [e["query_text"] for e in searched[email]] == list(reversed(texts))
        assert all(e["status"] == "success" and e["response_time_ms"] > 0 for e in searched[email])


async def test_figures_match_a_python_computation(
    client: httpx.AsyncClient, sign_in, searched
) -> None:
    # proves: X4, V2 (popular queries, daily trends, latency percentiles, search)
    _, admin = await sign_in("root@example.com", roles=("admin",))
    entries = [e for history in searched.values() for e in history]

    popular = await client.get("/stats/popular", params={"limit": 3}, headers=admin)
    assert popular.status_code == 200, popular.text
    counts = Counter(_normal(e["query_text"]) for e in entries)
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert [(p["normalized_text"], p["total"]) for p in popular.json()] == expected
    top = popular.json()[0]
    refund_ms = [
        e["response_time_ms"] for e in entries if _normal(e["query_text"]) == "refund status"
    ]
    assert top["users"] == 3 and top["avg_ms"] == pytest.approx(statistics.fmean(refund_ms))

    latency = await client.get("/stats/latency", headers=admin)
    (line,) = latency.json()
    times = sorted(e["response_time_ms"] for e in entries)
    # percentile_cont interpolates linearly, as statistics.quantiles(method="inclusive") does
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    assert line["query_type"] == "search" and line["total"] == len(times)
    assert line["p50"] == pytest.approx(cuts[49])
    assert line["p95"] == pytest.approx(cuts[94])
    assert line["p99"] == pytest.approx(cuts[98])

    trends = await client.get("/stats/trends", params={"zone": "Pacific/Kiritimati"}, headers=admin)
    # per day as the clock of the zone reads it (UTC+14: a day apart from UTC for 14 hours)
    zone = ZoneInfo("Pacific/Kiritimati")

    def day(entry: dict) -> str:
        return datetime.fromisoformat(entry["created_at"]).astimezone(zone).date().isoformat()

    users_by_day: dict[str, set[str]] = {}
    for email, history in searched.items():
        for entry in history:
            users_by_day.setdefault(day(entry), set()).add(email)
    expected_days = {
        d: (sum(day(e) == d for e in entries), len(users_by_day[d]), 0) for d in users_by_day
    }
    assert {d["day"]: (d["total"], d["users"], d["failures"]) for d in trends.json()} == (
        expected_days
    )

    found = await client.get("/stats/queries", params={"q": "vpn"}, headers=admin)
    assert sorted(h["query_text"] for h in found.json()) == ["vpn SETUP", "vpn setup", "vpn setup"]

    week_ago = datetime.now(UTC) - timedelta(days=7)
    period = {"since": (week_ago - timedelta(days=7)).isoformat(), "until": week_ago.isoformat()}
    empty = await client.get("/stats/popular", params=period, headers=admin)
    assert empty.status_code == 200 and empty.json() == []


async def test_figures_are_for_administrators(client: httpx.AsyncClient, sign_in) -> None:
    # proves: X4, W2 (roles guard the figures)
    _, member = await sign_in("member@example.com")
    for path in ("/stats/popular", "/stats/trends", "/stats/latency", "/stats/queries?q=a"):
        assert (await client.get(path, headers=member)).status_code == 403
        assert (await client.get(path)).status_code == 401


@pytest.mark.parametrize(
    "query",
    [
        "/stats/trends?zone=Mars/Olympus",
        "/stats/trends?zone=UTC';--",
        "/stats/popular?since=yesterday",
        "/stats/popular?limit=0",
        "/stats/latency?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/stats/queries?q=",
        "/me/queries?before_id=abc",
    ],
)
async def test_bad_figure_input_is_a_4xx(client: httpx.AsyncClient, sign_in, query: str) -> None:
    # proves: X4, W2 (no 5xx from any input)
    _, admin = await sign_in("op@example.com", roles=("admin",))
    answer = await client.get(query, headers=admin)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
