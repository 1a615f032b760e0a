"""Code that uses Repository[M] as an application would; mypy --strict must accept it as is.

`assert_type` fails type checking if a verb returned Any (or anything else) instead of the
model, so this file proves the repository's types, not only that it runs.
"""

from __future__ import annotations

from typing import assert_type

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped

from pgstack import CursorPage, Page, Repository
from pgstack.orm import NAMING_CONVENTION, BigIntPrimaryKey, ModelMixin
from pgstack.repository import Eq, Gt


class TypedBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Invoice(BigIntPrimaryKey, TypedBase):
    __tablename__ = "typed_invoices"
    number: Mapped[str]
    total: Mapped[int]


class Invoices(Repository[Invoice]):
    model = Invoice


async def use(session: AsyncSession) -> None:
    repo = Repository(session, Invoice)
    assert_type(repo, Repository[Invoice])
    assert_type(await repo.get(1), Invoice)
    assert_type(await repo.get_or_none(1), Invoice | None)
    assert_type(await repo.get_by(number="A-1"), Invoice)
    assert_type(await repo.list(Gt("total", 10), sort="-total"), list[Invoice])
    assert_type(await repo.count(Eq("number", "A-1")), int)
    assert_type(await repo.exists(number="A-1"), bool)
    assert_type(await repo.create({"number": "A-2", "total": 5}), Invoice)
    assert_type(await repo.create(Invoice(number="A-3", total=1)), Invoice)
    assert_type(await repo.update(1, {"total": 6}, expected_version=None), Invoice)
    assert_type(await repo.restore(1), Invoice)
    assert_type(await repo.upsert({"number": "A-2", "total": 7}, on=["number"]), Invoice)
    assert_type(await repo.upsert_many([{"number": "A-4", "total": 1}]), list[Invoice])
    assert_type(
        await repo.upsert_many([{"number": "A-4", "total": 2}], returning=True), list[Invoice]
    )
    assert_type(await repo.upsert_many([{"number": "A-4", "total": 3}], returning=False), int)
    assert_type(await repo.create_many([{"number": "A-5", "total": 1}]), int)
    assert_type(
        await repo.create_many([Invoice(number="A-6", total=1)], returning=True), list[Invoice]
    )
    assert_type(await repo.update_many({"total": 0}, Eq("number", "A-1")), int)
    assert_type(await repo.page(limit=10), Page[Invoice])
    assert_type(await repo.page_after(cursor=None), CursorPage[Invoice])
    page = await repo.page()
    first: Invoice = page.items[0]
    assert_type(first.total, int)

    subclassed = Invoices(session)
    assert_type(await subclassed.get(1), Invoice)
    assert_type((await subclassed.page_after()).items, list[Invoice])
