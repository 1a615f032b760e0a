"""Documents over HTTP: optimistic locking, a streamed all-or-nothing import, search."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

NDJSON = {"content-type": "application/x-ndjson"}


def _line(n: int, **extra: object) -> bytes:
    doc = {"slug": f"doc-{n}", "title": f"Document {n}", "body": f"Body of document {n}.", **extra}
    return (json.dumps(doc) + "\n").encode()


async def _streamed(count: int, bad: dict[int, bytes] | None = None) -> AsyncIterator[bytes]:
    """`count` documents as NDJSON, sent in chunks that cut lines in two."""
    pending = b""
    for n in range(1, count + 1):
        pending += (bad or {}).get(n, _line(n))
        if len(pending) >= 8192:
            yield pending[:5000]
            pending = pending[5000:]
    yield pending


async def _total(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    answer = await client.get("/documents", params={"limit": 1}, headers=headers)
    assert answer.status_code == 200, answer.text
    total: int = answer.json()["total"]
    return total


async def test_two_editors_at_once_one_gets_a_409(client: httpx.AsyncClient, sign_in) -> None:
    # proves: X4, R5 (optimistic locking: a stale version is a 409 problem, no lost update)
    alice, as_alice = await sign_in("alice@example.com")
    bob, as_bob = await sign_in("bob@example.com")
    made = await client.post(
        "/documents", json={"slug": "onboarding", "title": "Onboarding"}, headers=as_alice
    )
    assert made.status_code == 201, made.text
    doc = made.json()
    assert (doc["version"], doc["created_by"]) == (1, alice)

    url = f"/documents/{doc['id']}"
    answers = await asyncio.gather(
        client.patch(url, json={"version": 1, "body": "by alice"}, headers=as_alice),
        client.patch(url, json={"version": 1, "body": "by bob"}, headers=as_bob),
    )
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    (won,) = [a for a in answers if a.status_code == 200]
    (lost,) = [a for a in answers if a.status_code == 409]
    assert lost.headers["content-type"].startswith("application/problem+json")
    assert lost.json()["status"] == 409 and lost.json()["detail"]

    stored = (await client.get(url, headers=as_alice)).json()
    assert stored["version"] == 2
    assert stored["body"] == won.json()["body"]
    assert stored["updated_by"] == (alice if stored["body"] == "by alice" else bob)

    # the loser reads again and retries on the new version
    retried = await client.patch(url, json={"version": 2, "title": "Onboarding v2"}, headers=as_bob)
    assert retried.status_code == 200 and retried.json()["version"] == 3


async def test_a_streamed_import_writes_every_line_and_is_safe_to_repeat(
    client: httpx.AsyncClient, sign_in
) -> None:
    # proves: X4, R4 (bulk import from an iterable, batch by batch, in one transaction)
    user, headers = await sign_in("importer@example.com")
    count = 25_001  # three batches of the repository's stream_batch_size (10,000)
    first = await client.post(
        "/documents/import", content=_streamed(count), headers={**headers, **NDJSON}
    )
    assert first.status_code == 200, first.text
    assert first.json() == {"written": count}
    assert await _total(client, headers) == count

    page = await client.get("/documents", params={"slug": f"doc-{count}"}, headers=headers)
    (last,) = page.json()["items"]
    assert (last["title"], last["version"], last["created_by"]) == (f"Document {count}", 1, user)

    # the same file again, with one document changed: no duplicates, versions move
    changed = {count: _line(count, title="Renamed")}
    again = await client.post(
        "/documents/import", content=_streamed(count, changed), headers={**headers, **NDJSON}
    )
    assert again.status_code == 200, again.text
    assert await _total(client, headers) == count
    page = await client.get("/documents", params={"slug": f"doc-{count}"}, headers=headers)
    (last,) = page.json()["items"]
    assert (last["title"], last["version"]) == ("Renamed", 2)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (b'{"slug": "doc-x", "body": "no title"}\n', "line 12345: title: Field required"),
        (b'{"slug": "Not A Slug", "title": "t"}\n', "line 12345: slug:"),
        (b'{"slug": "doc-x", "title": "nul \\u0000 here"}\n', "line 12345: title:"),
        (
            b'{"slug": "doc-x", "title": "t", "owner": "root"}\n',
            "line 12345: fields: only slug, title and body",
        ),
        (b"not json at all\n", "line 12345: the line: is not one JSON object"),
        (b"[1, 2]\n", "line 12345"),
    ],
)
async def test_a_bad_line_is_a_422_naming_it_and_nothing_is_stored(
    client: httpx.AsyncClient, sign_in, bad_line: bytes, expected: str
) -> None:
    # proves: X4, R4 (all or nothing: 12,344 good lines before the bad one are not kept)
    _, headers = await sign_in("careless@example.com")
    answer = await client.post(
        "/documents/import",
        content=_streamed(20_000, {12_345: bad_line}),
        headers={**headers, **NDJSON},
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    detail = answer.json()["detail"]
    assert expected in detail and "Nothing was imported" in detail, detail
    assert "root" not in detail and "owner" not in detail and "nul" not in detail  # not echoed
    assert await _total(client, headers) == 0


async def test_an_import_refuses_what_is_not_ndjson(client: httpx.AsyncClient, sign_in) -> None:
    # proves: X4, W2 (clear errors, no 5xx)
    _, headers = await sign_in("sender@example.com")
    as_json = await client.post("/documents/import", json=[{"slug": "a"}], headers=headers)
    assert as_json.status_code == 422 and "application/x-ndjson" in as_json.json()["detail"]
    huge = await client.post(
        "/documents/import", content=b"x" * 1_200_000, headers={**headers, **NDJSON}
    )
    assert huge.status_code == 422 and "one document per line" in huge.json()["detail"]
    twice = _line(1) + _line(1)
    dup = await client.post("/documents/import", content=twice, headers={**headers, **NDJSON})
    assert dup.status_code == 422, dup.text
    empty = await client.post("/documents/import", content=b"\n\n", headers={**headers, **NDJSON})
    assert empty.json() == {"written": 0}
    assert await _total(client, headers) == 0


async def test_search_ranks_documents_and_hostile_terms_are_terms(
    client: httpx.AsyncClient, sign_in
) -> None:
    # proves: X4 (search), W2 (no input becomes SQL, no 5xx)
    _, headers = await sign_in("reader@example.com")
    docs = [
        {"slug": "refunds", "title": "Refunds", "body": "How refunding a customer works."},
        {"slug": "billing", "title": "Billing", "body": "Invoices, and refunds in passing."},
        {"slug": "holidays", "title": "Holidays", "body": "Days off."},
    ]
    body = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    await client.post("/documents/import", content=body, headers={**headers, **NDJSON})

    hits = await client.get("/search", params={"q": "refund"}, headers=headers)
    assert hits.status_code == 200, hits.text
    assert [h["slug"] for h in hits.json()] == ["refunds", "billing"]  # title outranks body
    excluded = await client.get("/search", params={"q": "refund -invoices"}, headers=headers)
    assert [h["slug"] for h in excluded.json()] == ["refunds"]

    for q in ("'; DROP TABLE documents; --", '"unclosed', "-", "or", "!!&&||", "a:*", "\\"):
        answer = await client.get("/search", params={"q": q}, headers=headers)
        assert answer.status_code == 200, (q, answer.text)
    for q in ("", "x" * 201, "tab\there"):
        answer = await client.get("/search", params={"q": q}, headers=headers)
        assert answer.status_code == 422, (q, answer.text)
    assert await _total(client, headers) == 3


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "body;drop"},
        {"body": "x"},
        {"search_vector": "x"},
        {"limit": "100000"},
        {"title__regex": ".*"},
    ],
)
async def test_listing_accepts_declared_fields_only(
    client: httpx.AsyncClient, sign_in, params: dict[str, str]
) -> None:
    # proves: X4, R2 (filters and sorts on an allow-list; anything else a 422)
    _, headers = await sign_in("lister@example.com")
    answer = await client.get("/documents", params=params, headers=headers)
    assert answer.status_code == 422, answer.text


async def test_routes_need_a_user(client: httpx.AsyncClient) -> None:
    # proves: X4, W2
    for method, path in [
        ("get", "/documents"),
        ("post", "/documents/import"),
        ("get", "/search?q=a"),
    ]:
        assert (await client.request(method, path)).status_code == 401
