"""create_many and upsert_many take any iterable or async iterable and write it in batches.

Memory is bounded by the batch: the input is read one batch ahead of what is written, which
the generators here check by counting, inside the same transaction, the rows written so far.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import MetaData, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.db.session import Session
from pgstack.errors import InvalidQueryError
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, ModelMixin, UUIDPrimaryKey

CreateTables = Callable[[MetaData], Awaitable[None]]
BATCH = 10


class StreamBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Sample(UUIDPrimaryKey, StreamBase):
    __tablename__ = "stream_samples"
    code: Mapped[str] = mapped_column(String(20), unique=True)
    value: Mapped[int]


class Samples(Repository[Sample]):
    model = Sample
    stream_batch_size: ClassVar[int] = BATCH


class CopiedSamples(Samples):
    copy_threshold: ClassVar[int] = 5  # every batch of 10 goes through COPY


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(StreamBase.metadata)


async def _written(session: Session) -> int:
    return int(await session.scalar(select(func.count()).select_from(Sample)) or 0)


async def _stored(db: Database) -> dict[str, int]:
    async with db.session() as session:
        return {s.code: s.value for s in await Samples(session).list(limit=1000)}


@pytest.mark.parametrize("repository", [Samples, CopiedSamples])
async def test_create_many_streams_an_async_iterator_batch_by_batch(
    pgstack_db: Database, repository: type[Samples]
) -> None:
    # proves: R4
    seen: list[int] = []
    async with pgstack_db.transaction() as session:

        async def rows() -> AsyncIterator[dict[str, Any]]:
            for n in range(25):
                if n % BATCH == 0:
                    # Each batch is written before the next is read: memory holds one batch.
                    seen.append(await _written(session))
                yield {"code": f"c{n}", "value": n}

        assert await repository(session).create_many(rows()) == 25
    assert seen == [0, 10, 20]
    assert await _stored(pgstack_db) == {f"c{n}": n for n in range(25)}


async def test_create_many_takes_a_generator_and_returns_objects(pgstack_db: Database) -> None:
    # proves: R4
    pulled: list[int] = []

    def rows() -> Iterator[dict[str, Any]]:
        for n in range(23):
            pulled.append(n)
            yield {"code": f"g{n}", "value": n}

    async with pgstack_db.transaction() as session:
        made = await Samples(session).create_many(rows(), returning=True)
        assert [s.code for s in made] == [f"g{n}" for n in range(23)]
        assert all(s.id is not None for s in made)
    assert pulled == list(range(23))
    assert len(await _stored(pgstack_db)) == 23
    async with pgstack_db.transaction() as session:
        assert await Samples(session).create_many(iter(())) == 0


async def test_a_failure_mid_stream_leaves_nothing_written(pgstack_db: Database) -> None:
    # proves: R4
    def broken() -> Iterator[dict[str, Any]]:
        for n in range(15):
            yield {"code": f"b{n}", "value": n}
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        async with pgstack_db.transaction() as session:
            await Samples(session).create_many(broken())
    hostile = ({"code": f"h{n}", "value": n} for n in range(12))
    late_bad = [*hostile, {"code": "x", "value": 1, "nope": "; DROP TABLE stream_samples"}]
    with pytest.raises(InvalidQueryError, match="no field"):
        async with pgstack_db.transaction() as session:
            await Samples(session).create_many(iter(late_bad))
    assert await _stored(pgstack_db) == {}


async def test_upsert_many_streams_and_updates_what_exists(pgstack_db: Database) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        await Samples(session).create_many([{"code": f"u{n}", "value": 0} for n in range(5)])
    seen: list[int] = []
    async with pgstack_db.transaction() as session:

        async def rows() -> AsyncIterator[dict[str, Any]]:
            for n in range(21):
                if n % BATCH == 0:
                    seen.append(await _written(session))
                yield {"code": f"u{n}", "value": n + 100}

        written = await Samples(session).upsert_many(rows(), on=["code"], returning=False)
        assert written == 21
    assert seen == [5, 10, 20]  # the first batch updated five rows and added five
    assert await _stored(pgstack_db) == {f"u{n}": n + 100 for n in range(21)}
    async with pgstack_db.transaction() as session:
        again = await Samples(session).upsert_many(
            ({"code": f"u{n}", "value": -n} for n in range(12)), on=["code"]
        )
        assert [(s.code, s.value) for s in again] == [(f"u{n}", -n) for n in range(12)]
