"""The analytics routes over HTTP: members log their own queries, tenant admins read figures."""

from __future__ import annotations

import httpx

from ..conversations.conftest import login, problem
from .conftest import Org


async def test_members_log_and_read_their_own_admins_read_the_figures(
    client: httpx.AsyncClient, org: Org
) -> None:
    # proves: V2, W2
    owner = await login(client, "u0@a.example", org.a.id)
    member = await login(client, "u1@a.example", org.a.id)
    for headers, text, ms in (
        (member, "Refund status", 10.0),
        (member, "refund  STATUS", 30.0),
        (owner, "invoice copy", 20.0),
    ):
        logged = await client.post(
            "/analytics/queries",
            json={
                "query_text": text,
                "query_type": "search",
                "status": "success",
                "response_time_ms": ms,
            },
            headers=headers,
        )
        assert logged.status_code == 201, logged.text
    mine = (await client.get("/analytics/queries/mine", headers=member)).json()
    assert [e["normalized_text"] for e in mine] == ["refund status", "refund status"]

    # the figures are for tenant admins (owners included) only
    for path in (
        "/analytics/popular",
        "/analytics/trends",
        "/analytics/latency",
        "/analytics/search?q=refund",
        f"/analytics/users/{org.users[0].id}/queries",
    ):
        problem(await client.get(path, headers=member), 403)
    popular = (await client.get("/analytics/popular", headers=owner)).json()
    assert [(p["normalized_text"], p["total"], p["avg_ms"]) for p in popular] == [
        ("refund status", 2, 20.0),
        ("invoice copy", 1, 20.0),
    ]
    latency = (await client.get("/analytics/latency", headers=owner)).json()
    assert latency == [{"query_type": "search", "total": 3, "p50": 20.0, "p95": 29.0, "p99": 29.8}]
    trends = (await client.get("/analytics/trends", headers=owner)).json()
    assert [(t["total"], t["failures"], t["users"]) for t in trends] == [(3, 0, 2)]
    hits = (await client.get("/analytics/search", params={"q": "refunds"}, headers=owner)).json()
    assert len(hits) == 2 and all(h["rank"] > 0 for h in hits)
    theirs = await client.get(f"/analytics/users/{org.users[1].id}/queries", headers=owner)
    assert len(theirs.json()) == 2

    # tenant B's owner sees none of it
    other = await login(client, "z@b.example", org.b.id)
    assert (await client.get("/analytics/popular", headers=other)).json() == []
    assert (
        await client.get(f"/analytics/users/{org.users[1].id}/queries", headers=other)
    ).json() == []


async def test_hostile_analytics_input_is_a_4xx_problem(
    client: httpx.AsyncClient, org: Org
) -> None:
    # proves: V2, W2
    owner = await login(client, "u0@a.example", org.a.id)
    good = {"query_text": "x", "query_type": "search", "status": "success", "response_time_ms": 1}
    for body in (
        {**good, "query_text": ""},
        {**good, "query_text": "a\x00b"},
        {**good, "query_type": "t\x00"},
        {**good, "status": "meh"},
        {**good, "response_time_ms": -1},
        {**good, "response_time_ms": "NaN"},
        {**good, "extra": True},
    ):
        problem(await client.post("/analytics/queries", json=body, headers=owner), 422)
    for path in (
        "/analytics/search",
        "/analytics/search?q=" + "x" * 1001,
        "/analytics/popular?limit=0",
        "/analytics/popular?since=2026-13-01",
        "/analytics/popular?since=2026-01-01T00:00:00",
        "/analytics/popular?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/analytics/trends?zone=Nowhere/Land",
        "/analytics/queries/mine?before_id=0",
    ):
        response = await client.get(path, headers=owner)
        assert 400 <= response.status_code < 500, (path, response.text)
    for q in ("'; DROP TABLE query_logs; --", "!!! & | :*", '"unclosed'):
        answer = await client.get("/analytics/search", params={"q": q}, headers=owner)
        assert answer.status_code == 200, answer.text
