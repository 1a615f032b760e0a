"""Page totals that do not grow with the table: exact, estimated, automatic, or none.

A table of ~100,000 rows in one tenant and a few hundred in another: "auto" answers the
planner's estimate for the big list, an exact count for a small (filtered or other-tenant)
one, and the estimate is of the filtered query, tenant condition included. Every test runs
on the fast path (a fresh session's reads on the read lane) and inside a transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import InvalidQueryError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    ModelMixin,
    SoftDelete,
    TenantScoped,
    UUIDPrimaryKey,
    all_tenants,
    tenant_context,
)
from pgstack.repository import Eq, Gt, In

CreateTables = Callable[[MetaData], Awaitable[None]]


class TotalsBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Reading(UUIDPrimaryKey, TenantScoped, SoftDelete, TotalsBase):
    __tablename__ = "total_readings"
    kind: Mapped[int]
    label: Mapped[str] = mapped_column(default="")


class Readings(Repository[Reading]):
    model = Reading
    page_total = "auto"


class Tally(UUIDPrimaryKey, SoftDelete, TotalsBase):
    """A second model: unfiltered estimates are planned once per model and scope."""

    __tablename__ = "total_tallies"
    kind: Mapped[int]


BIG, SMALL = uuid.uuid4(), uuid.uuid4()
BIG_ROWS, SMALL_ROWS, RARE_ROWS = 100_000, 300, 40


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables, pgstack_db: Database) -> None:
    await create_tables(TotalsBase.metadata)
    # Rows made by the server: BIG has 100,000 of kinds 0-9 and 40 of the rare kind 99;
    # SMALL has 300. Statistics as autovacuum would leave them.
    async with pgstack_db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO total_readings (id, tenant_id, kind, label) "
                "SELECT gen_random_uuid(), :tenant, "
                "CASE WHEN g <= :rare THEN 99 ELSE g % 10 END, 'r' || g "
                "FROM generate_series(1, :count) AS g"
            ),
            [
                {"tenant": BIG, "rare": RARE_ROWS, "count": BIG_ROWS + RARE_ROWS},
                {"tenant": SMALL, "rare": 0, "count": SMALL_ROWS},
            ],
        )
    async with pgstack_db.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE total_readings"))


@pytest.fixture(params=["lane", "transaction"])
def opened(request: pytest.FixtureRequest, pgstack_db: Database) -> Callable[[], Any]:
    """A session as the test's reads meet it: fresh (the read lane) or inside a transaction."""

    @asynccontextmanager
    async def open_session() -> AsyncIterator[AsyncSession]:
        if request.param == "lane":
            async with pgstack_db.session() as session:
                yield session
        else:
            async with pgstack_db.transaction(readonly=True) as session:
                yield session

    return open_session


async def test_auto_estimates_a_big_list_and_counts_a_small_one(
    opened: Callable[[], Any], sql_log: list[str]
) -> None:
    with tenant_context(BIG):
        async with opened() as session:
            page = await Readings(session).page(sort="label", limit=20, offset=100)
        assert page.total_is_estimate is True
        assert page.total is not None and 0.7 * BIG_ROWS < page.total < 1.3 * BIG_ROWS
        assert len(page.items) == 20 and page.has_more
        assert all(r.tenant_id == BIG for r in page.items)
        # Nothing was counted: one EXPLAIN, one page without count(*).
        assert any(s.startswith("EXPLAIN") for s in sql_log)
        assert not any("count(*)" in s for s in sql_log)

        # A small filtered result in the big tenant: the estimate is small, so it is counted.
        sql_log.clear()
        async with opened() as session:
            rare = await Readings(session).page(Eq("kind", 99), sort="label", limit=15)
        assert rare.total == RARE_ROWS and rare.total_is_estimate is False
        assert len(rare.items) == 15 and rare.has_more
        assert {r.kind for r in rare.items} == {99}
        assert any("count(*)" in s for s in sql_log)

    # The other tenant's list is small: exact, and none of the big tenant's rows.
    with tenant_context(SMALL):
        async with opened() as session:
            small = await Readings(session).page(sort="label", limit=50)
        assert small.total == SMALL_ROWS and small.total_is_estimate is False
        assert all(r.tenant_id == SMALL for r in small.items)


async def test_the_estimate_is_of_the_filtered_tenant_query(opened: Callable[[], Any]) -> None:
    # "estimate" never counts: the estimate itself shows which rows it is about.
    with tenant_context(SMALL):
        async with opened() as session:
            page = await Readings(session).page(sort="label", limit=10, total="estimate")
    assert page.total_is_estimate is True and page.has_more
    # About SMALL's 300 rows, nowhere near the 100,040 of the other tenant.
    assert page.total is not None and 100 < page.total < 1_000
    assert all(r.tenant_id == SMALL for r in page.items)

    with tenant_context(BIG):
        async with opened() as session:
            repo = Readings(session)
            kinds = await repo.page(In("kind", [1, 2]), sort="label", limit=10, total="estimate")
            one = await repo.page(Eq("kind", 9), limit=10, total="estimate")
            above = await repo.page(Gt("kind", 7), limit=10, total="estimate")
    # Two kinds of ten: about a fifth of the tenant's rows; one kind about a tenth.
    assert kinds.total is not None and 0.1 * BIG_ROWS < kinds.total < 0.3 * BIG_ROWS
    assert {r.kind for r in kinds.items} <= {1, 2}
    assert one.total is not None and 0.05 * BIG_ROWS < one.total < 0.15 * BIG_ROWS
    assert {r.kind for r in one.items} == {9}
    assert above.total is not None and 0.1 * BIG_ROWS < above.total < 0.3 * BIG_ROWS
    assert {r.kind for r in above.items} <= {8, 9, 99}


async def test_soft_deleted_rows_stay_out_of_estimated_pages(
    pgstack_db: Database, opened: Callable[[], Any]
) -> None:
    async with pgstack_db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE total_readings SET deleted_at = now() WHERE tenant_id = :t AND kind = 3"),
            {"t": BIG},
        )
    with tenant_context(BIG):
        async with opened() as session:
            page = await Readings(session).page(In("kind", [2, 3]), sort="label", limit=50)
    assert page.total_is_estimate is True
    assert {r.kind for r in page.items} == {2}
    assert all(r.deleted_at is None for r in page.items)


async def test_a_page_that_reaches_the_end_knows_its_total_exactly(
    opened: Callable[[], Any],
) -> None:
    with tenant_context(BIG):
        async with opened() as session:
            repo = Readings(session)
            last = await repo.page(sort="label", limit=25, offset=BIG_ROWS + RARE_ROWS - 10)
            beyond = await repo.page(sort="label", limit=25, offset=BIG_ROWS + 500)
            everything = await repo.page(Eq("kind", 99), limit=RARE_ROWS + 10, total="estimate")
    assert len(last.items) == 10 and not last.has_more
    assert last.total == BIG_ROWS + RARE_ROWS and last.total_is_estimate is False
    assert beyond.items == [] and not beyond.has_more
    # Past the end: an estimate, but never more than the rows before the offset.
    assert beyond.total_is_estimate is True
    assert beyond.total is not None and beyond.total <= BIG_ROWS + 500
    assert everything.total == RARE_ROWS and everything.total_is_estimate is False


async def test_exact_and_none_per_call(opened: Callable[[], Any], sql_log: list[str]) -> None:
    with tenant_context(BIG):
        async with opened() as session:
            repo = Readings(session)
            exact = await repo.page(Eq("kind", 4), limit=5, total="exact")
            sql_log.clear()
            bare = await repo.page(Eq("kind", 4), limit=5, total="none")
            assert not any("count(" in s or s.startswith("EXPLAIN") for s in sql_log)
            end = await repo.page(Eq("kind", 99), limit=50, total="none")
    assert exact.total == BIG_ROWS // 10 and exact.total_is_estimate is False
    assert bare.total is None and bare.has_more and bare.total_is_estimate is False
    assert [r.id for r in bare.items] == [r.id for r in exact.items]
    assert end.total is None and len(end.items) == RARE_ROWS and not end.has_more


async def test_the_class_default_is_exact(pgstack_db: Database) -> None:
    assert Repository.page_total == "exact"
    with tenant_context(BIG):
        async with pgstack_db.session() as session:
            page = await Repository(session, Reading).page(limit=5)
    assert page.total == BIG_ROWS + RARE_ROWS and page.total_is_estimate is False


@pytest.mark.parametrize("bad", ["EXACT", "count", "", 3, "none "])
async def test_an_unknown_total_mode_is_refused(pgstack_db: Database, bad: Any) -> None:
    with tenant_context(BIG):
        async with pgstack_db.session() as session:
            with pytest.raises(InvalidQueryError, match="total must be one of"):
                await Readings(session).page(limit=5, total=bad)


async def test_unfiltered_estimates_are_each_models_and_each_scopes(
    pgstack_db: Database, opened: Callable[[], Any]
) -> None:
    # Unfiltered pages plan their EXPLAIN once per model and scope (on the lane: once per
    # lane, found by name); each estimate is still of its own query.
    async with pgstack_db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO total_tallies (id, kind, deleted_at) SELECT gen_random_uuid(), "
                "g % 10, CASE WHEN g % 10 < 8 THEN now() END FROM generate_series(1, 5000) AS g"
            )
        )
    async with pgstack_db.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE total_tallies"))
    everyone = BIG_ROWS + RARE_ROWS + SMALL_ROWS
    for _ in range(2):  # the second time from what the first one kept
        with all_tenants():
            async with opened() as session:
                readings = await Readings(session).page(limit=5, total="estimate")
                tallies = await Repository(session, Tally).page(limit=5, total="estimate")
                with_deleted = await Repository(session, Tally).page(
                    limit=5, total="estimate", include_deleted=True
                )
        with tenant_context(SMALL):
            async with opened() as session:
                small = await Readings(session).page(limit=5, total="estimate")
        assert readings.total is not None and 0.7 * everyone < readings.total < 1.3 * everyone
        # 1,000 of the 5,000 tallies are not deleted.
        assert tallies.total is not None and 700 < tallies.total < 1_300
        assert with_deleted.total is not None and 3_500 < with_deleted.total < 6_500
        assert small.total is not None and 100 < small.total < 1_000
        assert all(t.deleted_at is None for t in tallies.items)
        assert all(r.tenant_id == SMALL for r in small.items)
