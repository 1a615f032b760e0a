"""Offset pages and keyset pages.

Offset pages with a right total (empty pages too), a maximum page size, and keyset pages
whose signed cursors visit every row exactly once, ties and NULLs included.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import MetaData, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import InvalidQueryError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    ModelMixin,
    SoftDelete,
    UUIDPrimaryKey,
)
from pgstack.repository import Eq, Gt, Sort, configure_cursor_secret

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class PageBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Entry(UUIDPrimaryKey, PageBase):
    __tablename__ = "page_entries"
    group: Mapped[int]
    score: Mapped[int | None]
    label: Mapped[str] = mapped_column(default="")


class Entries(Repository[Entry]):
    model = Entry
    default_page_size = 10
    max_page_size = 25


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(PageBase.metadata)


async def fill(db: Database, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    rows = [
        {"group": rng.randint(1, 4), "score": rng.choice([None, 1, 2, 3]), "label": f"e{i}"}
        for i in range(count)
    ]
    async with db.transaction() as session:
        await Entries(session).create_many(rows)


async def test_offset_pages_carry_the_total(pgstack_db: Database) -> None:
    # proves: R3
    await fill(pgstack_db, 23)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        first = await repo.page(sort="label")
        assert (len(first.items), first.total, first.limit, first.offset) == (10, 23, 10, 0)
        assert first.has_more
        last = await repo.page(sort="label", offset=20)
        assert (len(last.items), last.total, last.has_more) == (3, 23, False)
        seen = [
            e.label
            for p in (first, await repo.page(sort="label", offset=10), last)
            for e in p.items
        ]
        assert seen == sorted(f"e{i}" for i in range(23))
        filtered = await repo.page(Gt("group", 2), limit=5)
        assert filtered.total == await repo.count(Gt("group", 2))


async def test_an_empty_page_still_reports_the_total(pgstack_db: Database) -> None:
    # proves: R3
    await fill(pgstack_db, 12)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        beyond = await repo.page(offset=500)
        assert beyond.items == [] and beyond.total == 12 and not beyond.has_more
        nothing = await repo.page(Eq("label", "none"))
        assert nothing.items == [] and nothing.total == 0


async def test_page_size_is_capped(pgstack_db: Database) -> None:
    # proves: R3
    async with pgstack_db.session() as session:
        repo = Entries(session)
        assert (await repo.page(limit=25)).limit == 25
        for bad in (26, 0, -1):
            with pytest.raises(InvalidQueryError, match=r"maximum page size of 25|from 1 to 25"):
                await repo.page(limit=bad)
            with pytest.raises(InvalidQueryError):
                await repo.page_after(limit=bad)
        with pytest.raises(InvalidQueryError, match="offset"):
            await repo.page(offset=-5)


async def test_absurd_offsets_and_limits_are_invalid_queries_not_database_errors(
    pgstack_db: Database,
) -> None:
    # proves: R3
    async with pgstack_db.session() as session:
        repo = Entries(session)
        assert (await repo.page(offset=2**31 - 1)).items == []
        assert await repo.list(offset=2**31 - 1, limit=2**31 - 1) == []
        for absurd in (2**31, 2**63, 10**40, -1, True, 1.5, "3"):
            with pytest.raises(InvalidQueryError, match="offset must be a whole number"):
                await repo.page(offset=absurd)  # type: ignore[arg-type]
            with pytest.raises(InvalidQueryError, match="offset must be a whole number"):
                await repo.list(offset=absurd)  # type: ignore[arg-type]
            with pytest.raises(InvalidQueryError, match="limit must be a whole number"):
                await repo.list(limit=absurd)  # type: ignore[arg-type]
        spec = repo.parse_query({"offset": str(2**31), "limit": "5"})
        with pytest.raises(InvalidQueryError, match="offset"):
            await repo.page(*spec.filters, limit=spec.limit, offset=spec.offset)


async def walk(repo: Entries, sort: Any, limit: int, *filters: Any) -> list[Entry]:
    seen: list[Entry] = []
    cursor = None
    for _ in range(1000):
        page = await repo.page_after(*filters, cursor=cursor, sort=sort, limit=limit)
        assert len(page.items) <= limit
        seen.extend(page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
    raise AssertionError("the cursor walk did not end")


@pytest.mark.parametrize(
    "sort",
    [None, "group", "-group", ["group", "-score"], ["-score", "label"], ["score", "-group"]],
)
async def test_keyset_pages_visit_every_row_exactly_once(pgstack_db: Database, sort: Any) -> None:
    # proves: R3
    await fill(pgstack_db, 157)  # 4 groups and 4 scores (one NULL): many ties
    async with pgstack_db.session() as session:
        repo = Entries(session)
        everything = await repo.list(sort=sort)
        for limit in (1, 7, 25):
            seen = await walk(repo, sort, limit)
            assert [e.id for e in seen] == [e.id for e in everything]
            assert len({e.id for e in seen}) == 157


async def test_keyset_pages_with_filters(pgstack_db: Database) -> None:
    # proves: R3
    await fill(pgstack_db, 80)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        seen = await walk(repo, "-score", 6, Gt("group", 1))
        assert [e.id for e in seen] == [
            e.id for e in await repo.list(Gt("group", 1), sort="-score")
        ]


async def test_cursors_are_opaque_and_tamper_checked(pgstack_db: Database) -> None:
    # proves: R3
    await fill(pgstack_db, 30)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        cursor = (await repo.page_after(sort="group", limit=5)).next_cursor
        assert cursor is not None and "group" not in cursor
        body, tag = cursor.split(".")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        # Point the cursor elsewhere, keep the tag: refused.
        payload["v"][0] = 99
        forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        for bad in (f"{forged}.{tag}", cursor[:-2], "garbage", cursor + "x", ""):
            if not bad:
                continue
            with pytest.raises(InvalidQueryError, match="cursor is not valid"):
                await repo.page_after(cursor=bad, sort="group", limit=5)
        # A genuine cursor used for another query is refused too.
        with pytest.raises(InvalidQueryError, match="another query"):
            await repo.page_after(cursor=cursor, sort="-group", limit=5)
        with pytest.raises(InvalidQueryError, match="another query"):
            await repo.page_after(Eq("group", 1), cursor=cursor, sort="group", limit=5)


async def test_cursors_signed_with_another_secret_are_refused(pgstack_db: Database) -> None:
    # proves: R3
    await fill(pgstack_db, 10)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        try:
            configure_cursor_secret("replica-a")
            cursor = (await repo.page_after(limit=3)).next_cursor
            assert cursor is not None
            assert len((await repo.page_after(cursor=cursor, limit=3)).items) == 3
            configure_cursor_secret("replica-b")
            with pytest.raises(InvalidQueryError, match="PGSTACK_CURSOR_SECRET"):
                await repo.page_after(cursor=cursor, limit=3)
        finally:
            configure_cursor_secret(None)


async def test_insert_rows_directly_then_page(pgstack_db: Database) -> None:
    # proves: R3
    async with pgstack_db.transaction() as session:
        await session.execute(insert(Entry), [{"group": 1, "score": None, "label": "x"}] * 3)
    async with pgstack_db.session() as session:
        page = await Entries(session).page_after(sort="score", limit=2)
        assert len(page.items) == 2 and page.next_cursor is not None
        rest = await Entries(session).page_after(cursor=page.next_cursor, sort="score", limit=2)
        assert len(rest.items) == 1 and rest.next_cursor is None


@pytest.mark.parametrize("sort", ["label", "-label", ["group", "label"], ["-group", "-label"]])
async def test_pages_without_filters_match_pages_with_a_filter_that_keeps_every_row(
    pgstack_db: Database, sort: Any
) -> None:
    # proves: R3
    # Unfiltered pages take statements built once per sort; filtered ones are built per call.
    await fill(pgstack_db, 37)
    everything = Gt("group", 0)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        for offset in (0, 10, 30, 40):
            plain = await repo.page(sort=sort, offset=offset)
            filtered = await repo.page(everything, sort=sort, offset=offset)
            assert [e.id for e in plain.items] == [e.id for e in filtered.items]
            assert plain.total == filtered.total == 37
        walked = [e.id for e in await walk(repo, sort, 7)]
        assert walked == [e.id for e in await walk(repo, sort, 7, everything)]
        assert len(set(walked)) == 37


class Narrow(Repository[Entry]):
    model = Entry
    sortable = ("label",)


async def test_a_sort_one_repository_allows_stays_refused_by_another(
    pgstack_db: Database,
) -> None:
    # proves: R2, R3
    # Unfiltered pages keep their statement per sort; the allow-list is still each class's.
    await fill(pgstack_db, 3)
    async with pgstack_db.session() as session:
        assert len((await Entries(session).page(sort="score")).items) == 3
        assert len((await Entries(session).page_after(sort="score")).items) == 3
        with pytest.raises(InvalidQueryError, match="score"):
            await Narrow(session).page(sort="score")
        with pytest.raises(InvalidQueryError, match="score"):
            await Narrow(session).page_after(sort="score")


class Memo(UUIDPrimaryKey, SoftDelete, PageBase):
    __tablename__ = "page_memos"
    group: Mapped[int]
    label: Mapped[str] = mapped_column(default="")


@pytest.mark.parametrize(
    "sort", ["-group,label", ["-group", "label"], (Sort("group", True), "label")]
)
async def test_a_sort_pages_alike_however_it_is_given(pgstack_db: Database, sort: Any) -> None:
    # proves: R3
    # What a sort decides is kept per sort as given; every form is the same query.
    await fill(pgstack_db, 23)
    async with pgstack_db.session() as session:
        repo = Entries(session)
        expected = [e.id for e in await walk(repo, "-group,label", 5)]
        for _ in range(2):
            assert [e.id for e in await walk(repo, sort, 5)] == expected
        cursor = (await repo.page_after(sort=sort, limit=5)).next_cursor
        again = await repo.page_after(cursor=cursor, sort=["-group", "label"], limit=5)
        assert [e.id for e in again.items] == expected[5:10]
        page = await repo.page(sort=sort, limit=5, offset=5)
        assert [e.id for e in page.items] == expected[5:10]


async def test_models_and_deleted_rows_keep_their_own_keyset_pages(pgstack_db: Database) -> None:
    # proves: R3
    # The same sort on another model, or with deleted rows, is another query: its own rows,
    # and cursors of the one are refused by the other.
    await fill(pgstack_db, 12)
    async with pgstack_db.transaction() as session:
        memos = [
            await Repository(session, Memo).create(group=i % 3, label=f"m{i}") for i in range(9)
        ]
        await Repository(session, Memo).delete(memos[0].id)
    async with pgstack_db.session() as session:
        for _ in range(2):
            entries = await Entries(session).page_after(sort="label", limit=4)
            kept = await Repository(session, Memo).page_after(sort="label", limit=4)
            every = await Repository(session, Memo).page_after(
                sort="label", limit=4, include_deleted=True
            )
            assert all(isinstance(e, Entry) for e in entries.items)
            assert [m.label for m in kept.items] == ["m1", "m2", "m3", "m4"]
            assert [m.label for m in every.items] == ["m0", "m1", "m2", "m3"]
        for cursor, other in (
            (
                entries.next_cursor,
                lambda c: Repository(session, Memo).page_after(cursor=c, sort="label"),
            ),
            (kept.next_cursor, lambda c: Entries(session).page_after(cursor=c, sort="label")),
            (
                kept.next_cursor,
                lambda c: Repository(session, Memo).page_after(
                    cursor=c, sort="label", include_deleted=True
                ),
            ),
        ):
            with pytest.raises(InvalidQueryError, match="another query"):
                await other(cursor)
        rest = await Repository(session, Memo).page_after(
            cursor=every.next_cursor, sort="label", include_deleted=True
        )
        assert [m.label for m in rest.items] == ["m4", "m5", "m6", "m7", "m8"]


def test_cursors_keep_their_format() -> None:
    # proves: R3
    # Cursors handed out before stay valid: base64url(compact JSON) "." base64url(HMAC tag).
    import hashlib
    import hmac
    import uuid
    from datetime import UTC, datetime

    from pgstack.repository.pagination import decode_cursor, encode_cursor

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key = uuid.uuid4()
    at = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    values = [key, 3, 'a "b" é', None, at, 1.5, True]
    shown = [str(key), 3, 'a "b" é', None, at.isoformat(), 1.5, True]
    payload = json.dumps({"q": "q1", "v": shown}, separators=(",", ":")).encode()
    signing_key = hashlib.sha256(b"pgstack cursor key\x00format").digest()
    tag = hmac.new(signing_key, payload, "sha256").digest()[:16]
    try:
        configure_cursor_secret("format")
        cursor = encode_cursor("q1", values)
        assert cursor == f"{b64(payload)}.{b64(tag)}"
        assert decode_cursor(cursor, "q1", len(values)) == shown
    finally:
        configure_cursor_secret(None)
