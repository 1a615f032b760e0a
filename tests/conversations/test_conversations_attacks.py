"""The conversation and analytics routes under attack: ids, cursors, page sizes, odd bodies."""

from __future__ import annotations

import uuid

import httpx

from .conftest import People, login, problem


async def test_ids_cursors_and_page_sizes_from_an_attacker_are_4xx_never_5xx(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, V2, W2
    ada = await login(client, "ada@a.example", people.a.id)
    chat = (await client.post("/conversations", json={"agent_id": "bot"}, headers=ada)).json()
    url = f"/conversations/{chat['id']}"
    await client.post(f"{url}/messages", json={"role": "user", "content": "hi"}, headers=ada)
    for path in (
        # malformed session ids
        "/conversations/1",
        "/conversations/" + "a" * 10_000,
        "/conversations/%00",
        f"/conversations/{chat['id']}x/messages",
        "/conversations/' OR 1=1 --",
        # malformed and out-of-range cursors
        f"{url}/messages?before_seq=abc",
        f"{url}/messages?before_seq=1.5",
        f"{url}/messages?before_seq=0",
        f"{url}/messages?before_seq={2**31}",
        f"{url}/messages?before_seq={2**64}",
        f"{url}/messages?after_seq=-1",
        f"{url}/messages?after_seq={2**63}",
        # huge or absurd page sizes
        f"{url}/messages?limit=501",
        f"{url}/messages?limit={10**30}",
        f"{url}/messages?limit=-5",
        "/conversations?limit=1000000",
        "/conversations?limit=1e3",
        # the analytics side
        f"/analytics/queries/mine?before_id={2**63}",
        f"/analytics/queries/mine?before_id={10**40}",
        "/analytics/queries/mine?before_id=-1",
        "/analytics/queries/mine?limit=1001",
        f"/analytics/queries/mine?limit={10**30}",
        "/analytics/users/not-a-uuid/queries",
        f"/analytics/users/{uuid.uuid4()}/queries?before_id={2**63}",
        "/analytics/popular?limit=100000",
        "/analytics/popular?since=0001-01-01T00:00:00%2B14:00",
        "/analytics/popular?until=9999-12-31T23:59:59-14:00",
        "/analytics/popular?since=9999-12-31T23:59:59Z",
        "/analytics/latency?since=-99999999999999",
        "/analytics/trends?zone=Mars/Olympus",
        "/analytics/trends?zone=../../../../etc/passwd",
        "/analytics/trends?zone=%00",
        "/analytics/search?q=%00",
        "/analytics/search?q=refund&limit=0",
    ):
        response = await client.get(path, headers=ada)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), path
    # nothing of it moved the session
    after = (await client.get(url, headers=ada)).json()
    assert (after["message_count"], after["status"]) == (1, "active")


async def test_odd_bodies_are_4xx_and_valid_odd_ones_are_stored_as_sent(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, W2
    ada = await login(client, "ada@a.example", people.a.id)
    chat = (await client.post("/conversations", json={"agent_id": "bot"}, headers=ada)).json()
    url = f"/conversations/{chat['id']}"
    headers = {**ada, "Content-Type": "application/json"}
    for body in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"role": "user", "content": "x", "tool_calls": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"role": "user", "content": "x", "tokens": 1e400}',
        b'{"role": "user", "content": "x", "tokens": "NaN"}',
        b'{"role": "user", "content": "\\ud800"}',
        b'{"role": "user", "content": ' + b'"' + b"x" * 1_000_001 + b'"}',
        b"not json",
        b"",
        b"null",
    ):
        response = await client.post(f"{url}/messages", content=body, headers=headers)
        assert 400 <= response.status_code < 500, (body[:60], response.status_code, response.text)
    for body in (
        b'{"context": {"k": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
        b'{"context": {' + b",".join(b'"k%d": 1' % i for i in range(501)) + b"}}",
    ):
        response = await client.patch(url, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (body[:60], response.status_code)
    # deep but sane tool calls and a long message are stored and read back as sent
    deep: object = "leaf"
    for _ in range(200):
        deep = {"next": deep}
    made = await client.post(
        f"{url}/messages",
        json={"role": "tool", "content": "é" * 100_000, "tool_calls": [deep]},
        headers=ada,
    )
    assert made.status_code == 201, made.text
    page = (await client.get(f"{url}/messages", headers=ada)).json()
    assert page["messages"][-1]["tool_calls"] == [deep]
    assert page["messages"][-1]["content"] == "é" * 100_000
    assert (await client.get(url, headers=ada)).json()["message_count"] == 1


async def test_one_member_cannot_reach_anothers_session_by_any_route(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, N3, W2
    ada = await login(client, "ada@a.example", people.a.id)
    bob = await login(client, "bob@a.example", people.a.id)
    chat = (await client.post("/conversations", json={"agent_id": "bot"}, headers=ada)).json()
    url = f"/conversations/{chat['id']}"
    await client.post(f"{url}/messages", json={"role": "user", "content": "secret"}, headers=ada)
    # bob knows the id: every door is a 404 that says nothing of the session
    answers = [
        await client.get(url, headers=bob),
        await client.get(f"{url}/messages?after_seq=0", headers=bob),
        await client.post(f"{url}/messages", json={"role": "user", "content": "x"}, headers=bob),
        await client.patch(url, json={"context": {"pwned": True}}, headers=bob),
        await client.post(f"{url}/status", json={"status": "failed"}, headers=bob),
        await client.delete(url, headers=bob),
    ]
    for answer in answers:
        body = problem(answer, 404)
        assert "secret" not in answer.text
        assert body["status"] == 404
    # the same 404 as for an id that does not exist at all
    missing = problem(await client.get(f"/conversations/{uuid.uuid4()}", headers=bob), 404)
    assert missing["title"] == problem(answers[0], 404)["title"]
    # a tenant id of a tenant bob is not in, in the header
    problem(await client.get(url, headers={**bob, "X-Tenant-ID": str(people.b.id)}), 404)
    for bad in ("not-a-uuid", "", "' OR 1=1 --"):
        answer = await client.get(url, headers={**bob, "X-Tenant-ID": bad})
        assert 400 <= answer.status_code < 500, (bad, answer.text)
    # nothing moved
    still = (await client.get(f"{url}/messages", headers=ada)).json()
    assert [m["content"] for m in still["messages"]] == ["secret"]
    session = (await client.get(url, headers=ada)).json()
    assert (session["status"], session["context"]) == ("active", {})
