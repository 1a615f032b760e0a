"""The conversation routes as a client and an intruder meet them, over HTTP."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from pgstack.db.database import Database
from pgstack.identity import Identity
from pgstack.tenancy import Tenancy

from .conftest import STRONG, People, login, problem


async def test_a_conversation_from_start_to_close(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, W2
    ada = await login(client, "ada@a.example", people.a.id)
    made = await client.post(
        "/conversations",
        json={"agent_id": "support-bot", "title": "Refund", "context": {"order": 42}},
        headers=ada,
    )
    assert made.status_code == 201, made.text
    chat = made.json()
    assert (chat["status"], chat["message_count"], chat["context"]) == ("active", 0, {"order": 42})
    url = f"/conversations/{chat['id']}"

    answers = await asyncio.gather(
        *(
            client.post(
                f"{url}/messages",
                json={"role": "user", "content": f"m{i}", "tokens": 2},
                headers=ada,
            )
            for i in range(10)
        )
    )
    assert sorted(a.json()["seq"] for a in answers) == list(range(1, 11))
    assert all(a.status_code == 201 for a in answers)
    tool = await client.post(
        f"{url}/messages",
        json={"role": "tool", "content": "", "tool_calls": [{"name": "lookup", "args": {"id": 1}}]},
        headers=ada,
    )
    assert tool.json()["seq"] == 11 and tool.json()["tool_calls"][0]["name"] == "lookup"

    page = (await client.get(f"{url}/messages", params={"limit": 4}, headers=ada)).json()
    assert [m["seq"] for m in page["messages"]] == [8, 9, 10, 11]
    older = await client.get(
        f"{url}/messages", params={"limit": 4, "before_seq": page["next_before"]}, headers=ada
    )
    assert [m["seq"] for m in older.json()["messages"]] == [4, 5, 6, 7]

    patched = await client.patch(
        url, json={"context": {"step": 2}, "metadata": {"channel": "web"}}, headers=ada
    )
    assert patched.json()["context"] == {"order": 42, "step": 2}
    assert patched.json()["title"] == "Refund"
    cleared = await client.patch(
        url, json={"title": None, "remove_context": ["order"]}, headers=ada
    )
    assert (cleared.json()["title"], cleared.json()["context"]) == (None, {"step": 2})

    closed = await client.post(f"{url}/status", json={"status": "completed"}, headers=ada)
    assert closed.json()["status"] == "completed"
    assert closed.json()["message_count"] == 11 and closed.json()["token_count"] == 20
    late = await client.post(f"{url}/messages", json={"role": "user", "content": "hi"}, headers=ada)
    assert "takes no new messages" in str(problem(late, 409)["detail"])
    again = await client.post(f"{url}/status", json={"status": "failed"}, headers=ada)
    problem(again, 409)
    listed = await client.get("/conversations", params={"status": "completed"}, headers=ada)
    assert [s["id"] for s in listed.json()] == [chat["id"]]
    assert (await client.delete(url, headers=ada)).status_code == 204
    problem(await client.get(url, headers=ada), 404)


async def test_another_member_or_tenant_finds_nothing(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, N3, W2
    ada = await login(client, "ada@a.example", people.a.id)
    chat = (await client.post("/conversations", json={"agent_id": "bot"}, headers=ada)).json()
    url = f"/conversations/{chat['id']}"
    bob = await login(client, "bob@a.example", people.a.id)
    for method, path, body in (
        ("GET", url, None),
        ("PATCH", url, {"title": "mine"}),
        ("DELETE", url, None),
        ("POST", f"{url}/messages", {"role": "user", "content": "x"}),
        ("GET", f"{url}/messages", None),
        ("POST", f"{url}/status", {"status": "cancelled"}),
    ):
        problem(await client.request(method, path, json=body, headers=bob), 404)
    assert (await client.get("/conversations", headers=bob)).json() == []
    # ada naming tenant B, where she is no member: refused before any conversation is read
    ada_in_b = {**ada, "X-Tenant-ID": str(people.b.id)}
    problem(await client.get(url, headers=ada_in_b), 404)
    cy = await login(client, "cy@b.example", people.b.id)
    problem(await client.get(url, headers=cy), 404)
    problem(await client.get("/conversations", headers={"X-Tenant-ID": str(people.a.id)}), 401)
    still = (await client.get(url, headers=ada)).json()
    assert (still["message_count"], still["title"], still["status"]) == (0, None, "active")


async def test_a_viewer_reads_but_does_not_write(
    client: httpx.AsyncClient, people: People, pgstack_migrated_db: Database
) -> None:
    # proves: V1, W2
    identity, tenancy = Identity(pgstack_migrated_db), Tenancy(pgstack_migrated_db)
    viewer = await identity.users.create("vi@a.example", STRONG, verified=True)
    await tenancy.memberships.add(people.a.id, viewer.id, "viewer")
    headers = await login(client, "vi@a.example", people.a.id)
    assert (await client.get("/conversations", headers=headers)).json() == []
    problem(await client.post("/conversations", json={"agent_id": "bot"}, headers=headers), 403)


async def test_hostile_input_is_a_4xx_problem_never_a_5xx(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, W2
    ada = await login(client, "ada@a.example", people.a.id)
    chat = (await client.post("/conversations", json={"agent_id": "bot"}, headers=ada)).json()
    url = f"/conversations/{chat['id']}"
    cases = [
        ("POST", "/conversations", {"agent_id": ""}),
        ("POST", "/conversations", {"agent_id": "bot\x00"}),
        ("POST", "/conversations", {"agent_id": "bot", "context": {"k": "a\x00b"}}),
        ("POST", "/conversations", {"agent_id": "bot", "context": [1]}),
        ("POST", "/conversations", {"agent_id": "bot", "surprise": 1}),
        ("POST", "/conversations", {"agent_id": "bot", "id": "not-a-uuid"}),
        ("POST", f"{url}/messages", {"role": "robot", "content": "x"}),
        ("POST", f"{url}/messages", {"role": "user", "content": "nul\x00"}),
        ("POST", f"{url}/messages", {"role": "user", "content": "x", "tokens": -1}),
        ("POST", f"{url}/messages", {"role": "user", "content": "x", "tokens": 2**31}),
        ("POST", f"{url}/messages", {"role": "user", "content": "x", "tool_calls": {"a": "\x00"}}),
        ("POST", f"{url}/status", {"status": "active"}),
        ("POST", f"{url}/status", {"status": "expired"}),
        ("PATCH", url, {"remove_context": ["a\x00"]}),
        ("PATCH", url, {"metadata": "text"}),
        ("GET", f"{url}/messages?limit=0", None),
        ("GET", f"{url}/messages?before_seq=-1", None),
        ("GET", f"{url}/messages?before_seq=99999999999", None),
        ("GET", "/conversations?status=paused", None),
        ("GET", "/conversations/not-a-uuid", None),
        ("GET", f"/conversations/{uuid.uuid4()}/messages", None),
    ]
    for method, path, body in cases:
        response = await client.request(method, path, json=body, headers=ada)
        assert 400 <= response.status_code < 500, (method, path, body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    after = (await client.get(url, headers=ada)).json()
    assert (after["message_count"], after["status"], after["context"]) == (0, "active", {})


async def test_an_agent_id_is_a_printable_name_of_at_most_200_characters(
    client: httpx.AsyncClient, people: People
) -> None:
    # proves: V1, I8, W2
    ada = await login(client, "ada@a.example", people.a.id)
    refused = [
        "",
        "   ",
        " bot",
        "bot\n",
        "bot\x00",
        "bot\x1b[31m",
        "\x85bot",  # a C1 control
        "bot\u202egnp.exe",  # a right-to-left override
        "\u200b",  # a zero-width space: an id that looks empty
        "bot\ufeff",
        "bot\u2028two",
        "bot\ue000",  # private use
        "bot\U000e0001",  # a language tag (format)
        "x" * 201,
        "é" * 201,
        "x" * 5_000_000,
    ]
    for agent_id in refused:
        answer = await client.post("/conversations", json={"agent_id": agent_id}, headers=ada)
        body = problem(answer, 422)
        assert "agent_id" in str(body), (agent_id[:20], body)
    # a lone surrogate, as JSON can spell it
    raw = b'{"agent_id": "bot\\ud800"}'
    answer = await client.post(
        "/conversations", content=raw, headers={**ada, "Content-Type": "application/json"}
    )
    problem(answer, 422)
    assert (await client.get("/conversations", headers=ada)).json() == []
    # Names as people give them are kept as sent.
    for agent_id in ("support-bot", "billing/v2@eu", "Sales Assistant", "客服机器人", "é" * 200):
        made = await client.post("/conversations", json={"agent_id": agent_id}, headers=ada)
        assert made.status_code == 201, (agent_id, made.text)
        assert made.json()["agent_id"] == agent_id
