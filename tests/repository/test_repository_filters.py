"""Filters and sorting.

Every operator, AND/OR, multi-field sorts, allow-lists, the query-string parser, and a
property test against the same predicates evaluated in Python.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, String, delete, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import InvalidQueryError
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, EncryptedText, ModelMixin
from pgstack.repository import (
    After,
    And,
    Before,
    Between,
    Eq,
    Filter,
    Ge,
    Gt,
    ILike,
    In,
    IsNull,
    Le,
    Like,
    Lt,
    Ne,
    NotIn,
    Or,
    Sort,
    parse_query,
)

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class FilterBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Item(FilterBase):
    __tablename__ = "filter_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    # The C collation orders text by code point, as Python's str comparison does.
    name: Mapped[str] = mapped_column(String(20, collation="C"))
    num: Mapped[int | None]
    flag: Mapped[bool | None]
    at: Mapped[datetime | None]
    secret: Mapped[str | None] = mapped_column(EncryptedText())
    internal: Mapped[str | None] = mapped_column(info={"secret": True})


class Items(Repository[Item]):
    model = Item


class NarrowItems(Repository[Item]):
    model = Item
    filterable = ("name",)
    sortable = ("num",)


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(FilterBase.metadata)


T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROWS: list[dict[str, Any]] = [
    {"id": 1, "name": "apple", "num": 3, "flag": True, "at": T0},
    {"id": 2, "name": "Apricot", "num": None, "flag": False, "at": T0 + timedelta(days=1)},
    {"id": 3, "name": "banana", "num": 7, "flag": None, "at": None},
    {"id": 4, "name": "cherry", "num": 3, "flag": True, "at": T0 + timedelta(days=2)},
    {"id": 5, "name": "date", "num": -1, "flag": False, "at": T0 + timedelta(days=3)},
]


async def ids(db: Database, *filters: Filter, **kw: Any) -> list[int]:
    async with db.session() as session:
        return [item.id for item in await Items(session).list(*filters, sort="id", **kw)]


@pytest.fixture
async def rows(pgstack_db: Database) -> None:
    async with pgstack_db.transaction() as session:
        await session.execute(insert(Item), ROWS)


@pytest.mark.usefixtures("rows")
async def test_each_operator(pgstack_db: Database) -> None:
    # proves: R2
    db = pgstack_db
    assert await ids(db, Eq("num", 3)) == [1, 4]
    assert await ids(db, Eq("num", None)) == [2]
    assert await ids(db, Ne("num", 3)) == [2, 3, 5]  # NULL is "not 3" too
    assert await ids(db, Ne("num", None)) == [1, 3, 4, 5]
    assert await ids(db, In("num", [3, 7])) == [1, 3, 4]
    assert await ids(db, In("num", [7, None])) == [2, 3]
    assert await ids(db, In("num", [])) == []
    assert await ids(db, NotIn("num", [3, 7])) == [2, 5]
    assert await ids(db, NotIn("num", [3, None])) == [3, 5]
    assert await ids(db, NotIn("num", [])) == [1, 2, 3, 4, 5]
    assert await ids(db, Like("name", "a%")) == [1]
    assert await ids(db, ILike("name", "a%")) == [1, 2]
    assert await ids(db, Like("name", "_a%")) == [3, 5]
    assert await ids(db, Between("num", 0, 3)) == [1, 4]
    assert await ids(db, Lt("num", 3)) == [5]
    assert await ids(db, Le("num", 3)) == [1, 4, 5]
    assert await ids(db, Gt("num", 3)) == [3]
    assert await ids(db, Ge("num", 3)) == [1, 3, 4]
    assert await ids(db, Before("at", T0 + timedelta(days=1))) == [1]
    assert await ids(db, After("at", T0 + timedelta(days=1))) == [4, 5]
    assert await ids(db, IsNull("at")) == [3]
    assert await ids(db, IsNull("at", False)) == [1, 2, 4, 5]
    assert await ids(db, Eq("flag", True)) == [1, 4]


@pytest.mark.usefixtures("rows")
async def test_and_or_groups_and_keyword_equality(pgstack_db: Database) -> None:
    # proves: R2
    db = pgstack_db
    assert await ids(db, Or(Eq("num", 7), And(Eq("flag", True), Gt("at", T0)))) == [3, 4]
    assert await ids(db, Eq("num", 3) | Eq("num", -1)) == [1, 4, 5]
    assert await ids(db, Eq("num", 3) & Eq("name", "cherry")) == [4]
    assert await ids(db, Ge("num", 0), flag=True) == [1, 4]
    assert await ids(db, And()) == [1, 2, 3, 4, 5] and await ids(db, Or()) == []


@pytest.mark.usefixtures("rows")
async def test_sorting_on_several_fields(pgstack_db: Database) -> None:
    # proves: R2
    async with pgstack_db.session() as session:
        repo = Items(session)

        async def order(sort: Any) -> list[int]:
            return [item.id for item in await repo.list(sort=sort)]

        assert await order(["-num", "name"]) == [2, 3, 1, 4, 5]  # NULL first descending
        assert await order("num,-name") == [5, 4, 1, 3, 2]  # NULL last ascending
        assert await order([Sort("flag"), Sort("at", descending=True)]) == [5, 2, 4, 1, 3]


INJECTIONS = ["id; DROP TABLE filter_items", "name' OR '1'='1", "num--", "", "__class__"]


@pytest.mark.usefixtures("rows")
@pytest.mark.parametrize("name", INJECTIONS)
async def test_unknown_or_hostile_field_names_never_reach_sql(
    pgstack_db: Database, sql_log: list[str], name: str
) -> None:
    # proves: R2
    async with pgstack_db.session() as session:
        repo = Items(session)
        sql_log.clear()
        with pytest.raises(InvalidQueryError, match="allowed fields are id, name, num") as info:
            await repo.list(Eq(name, 1))
        assert info.value.status_code == 422
        with pytest.raises(InvalidQueryError, match="Cannot sort"):
            await repo.list(sort=name or "-")
        with pytest.raises(InvalidQueryError):
            await repo.page(Or(Gt("num", 1), IsNull(name)))
        with pytest.raises(InvalidQueryError):
            repo.parse_query({f"{name}__eq": "1"})
        assert sql_log == []  # refused before anything was sent
    async with pgstack_db.session() as session:
        assert await Items(session).count() == len(ROWS)


@pytest.mark.usefixtures("rows")
async def test_secret_columns_and_fields_outside_the_allow_list_are_refused(
    pgstack_db: Database,
) -> None:
    # proves: R2
    async with pgstack_db.session() as session:
        for secret in ("secret", "internal"):
            with pytest.raises(InvalidQueryError, match=f"by '{secret}'"):
                await Items(session).count(Eq(secret, "x"))
        narrow = NarrowItems(session)
        assert await narrow.count(Like("name", "%an%")) == 1
        with pytest.raises(InvalidQueryError, match="allowed fields are name"):
            await narrow.count(Eq("num", 3))
        with pytest.raises(InvalidQueryError, match="allowed fields are num"):
            await narrow.list(sort="name")
        assert [i.id for i in await narrow.list(sort="-num")][:1] == [2]


@pytest.mark.usefixtures("rows")
async def test_query_string_form(pgstack_db: Database) -> None:
    # proves: R2
    spec = parse_query("name__ilike=a%25&num__ge=0&sort=-num,name&limit=10&offset=0")
    assert spec.filters == (ILike("name", "a%"), Ge("num", "0"))
    assert spec.sort == (Sort("num", True), Sort("name")) and spec.limit == 10
    async with pgstack_db.session() as session:
        repo = Items(session)
        checked = repo.parse_query(
            {"num__in": "3,7", "at__after": "2026-01-01T12:00:00Z", "flag__isnull": "false"}
        )
        assert [i.id for i in await repo.list(*checked.filters)] == [4]
        between = repo.parse_query([("at__between", "2026-01-01,2026-01-02"), ("name", "apple")])
        assert [i.id for i in await repo.list(*between.filters)] == [1]
        with pytest.raises(InvalidQueryError, match="takes a whole number"):
            await repo.list(*repo.parse_query("num__gt=abc").filters)
        with pytest.raises(InvalidQueryError, match="Unknown operator 'regex'"):
            parse_query("name__regex=.*")
        with pytest.raises(InvalidQueryError, match="limit must be a whole number"):
            parse_query("limit=ten")


# -- property: the database agrees with the same predicate in Python ---------------------

NAMES = st.text(alphabet="abAB", min_size=0, max_size=4)
NUMS = st.one_of(st.none(), st.integers(-3, 3))
TIMES = st.one_of(st.none(), st.integers(0, 4).map(lambda d: T0 + timedelta(hours=d)))
FLAGS = st.one_of(st.none(), st.booleans())
PATTERNS = st.text(alphabet="abAB%_", min_size=0, max_size=4)

ROW = st.fixed_dictionaries({"name": NAMES, "num": NUMS, "flag": FLAGS, "at": TIMES})


def comparable(field: str) -> st.SearchStrategy[Any]:
    inner = {"name": NAMES, "num": st.integers(-3, 3), "at": TIMES.filter(bool)}[field]
    return inner


def leaf_filters() -> st.SearchStrategy[Filter]:
    values = {"name": NAMES, "num": NUMS, "flag": FLAGS, "at": TIMES}
    eq_like = st.sampled_from(["name", "num", "flag", "at"]).flatmap(
        lambda f: st.one_of(
            st.builds(Eq, st.just(f), values[f]),
            st.builds(Ne, st.just(f), values[f]),
            st.builds(In, st.just(f), st.lists(values[f], max_size=3)),
            st.builds(NotIn, st.just(f), st.lists(values[f], max_size=3)),
            st.builds(IsNull, st.just(f), st.booleans()),
        )
    )
    ordered = st.sampled_from(["name", "num", "at"]).flatmap(
        lambda f: st.one_of(
            *(st.builds(op, st.just(f), comparable(f)) for op in (Lt, Le, Gt, Ge)),
            st.builds(Between, st.just(f), comparable(f), comparable(f)),
        )
    )
    patterns = st.one_of(
        st.builds(Like, st.just("name"), PATTERNS), st.builds(ILike, st.just("name"), PATTERNS)
    )
    return st.one_of(eq_like, ordered, patterns)


FILTERS = st.recursive(
    leaf_filters(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda fs: And(*fs)),
        st.lists(inner, max_size=3).map(lambda fs: Or(*fs)),
    ),
    max_leaves=6,
)


def like_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    body = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile(f"{body}\\Z", flags | re.S)


def matches(f: Filter, row: dict[str, Any]) -> bool:
    """The filter's meaning, written independently of pgstack, over one row."""
    if isinstance(f, And):
        return all(matches(g, row) for g in f.filters)
    if isinstance(f, Or):
        return any(matches(g, row) for g in f.filters)
    if isinstance(f, IsNull):
        return (row[f.field] is None) == f.is_null
    if isinstance(f, Eq | Ne):
        equal = row[f.field] == f.value if f.value is not None else row[f.field] is None
        return equal if isinstance(f, Eq) else not equal
    if isinstance(f, In | NotIn):
        inside = row[f.field] in f.values
        return inside if isinstance(f, In) else not inside
    value = row[f.field]
    if value is None:
        return False
    if isinstance(f, Like):
        return like_regex(f.pattern).match(value) is not None
    if isinstance(f, ILike):
        return like_regex(f.pattern, re.I).match(value) is not None
    if isinstance(f, Between):
        return bool(f.low <= value <= f.high)
    compare = {Lt: value.__lt__, Le: value.__le__, Gt: value.__gt__, Ge: value.__ge__}
    return bool(compare[type(f)](f.value))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(ROW, max_size=12), filters=st.lists(FILTERS, min_size=1, max_size=3))
async def test_every_filter_combination_matches_python(
    pgstack_db: Database, rows: Sequence[dict[str, Any]], filters: list[Filter]
) -> None:
    # proves: R2
    numbered = [{"id": i, **row} for i, row in enumerate(rows, start=1)]
    async with pgstack_db.transaction() as session:
        await session.execute(delete(Item))
        if numbered:
            await session.execute(insert(Item), numbered)
        repo = Items(session)
        for f in filters:
            expected = [r["id"] for r in numbered if matches(f, r)]
            found = [item.id for item in await repo.list(f, sort="id")]
            assert found == expected, f
            assert await repo.count(f) == len(expected)
