"""Tenant scoping of repository queries and inserts.

Every query is filtered by the tenant in context, every insert carries it, and without a
tenant the repository refuses to run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import MetaData, String, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import ConflictError, NotFoundError, TenantScopeError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    ModelMixin,
    TenantScoped,
    UUIDPrimaryKey,
    all_tenants,
    tenant_context,
)
from pgstack.repository import Eq

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class TenantBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Meeting(UUIDPrimaryKey, TenantScoped, TenantBase):
    __tablename__ = "tenant_meetings"
    title: Mapped[str]
    slot: Mapped[int] = mapped_column(default=0)


class Domain(UUIDPrimaryKey, TenantScoped, TenantBase):
    __tablename__ = "tenant_domains"
    __table_args__ = (UniqueConstraint("host"),)
    host: Mapped[str] = mapped_column(String(100))


ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(TenantBase.metadata)


async def seed(db: Database) -> dict[uuid.UUID, list[uuid.UUID]]:
    made: dict[uuid.UUID, list[uuid.UUID]] = {}
    for tenant, titles in ((ACME, ["a1", "a2", "a3"]), (GLOBEX, ["g1"])):
        with tenant_context(tenant):
            async with db.transaction() as session:
                repo = Repository(session, Meeting)
                made[tenant] = [(await repo.create(title=t)).id for t in titles]
    return made


async def test_every_insert_carries_the_tenant_in_context(pgstack_db: Database) -> None:
    # proves: R7
    made = await seed(pgstack_db)
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Meeting)
            await repo.create_many([{"title": f"bulk{i}"} for i in range(150)])  # COPY
            await repo.create_many([{"title": "small"}])
            await repo.upsert({"title": "up"})
    async with pgstack_db.session() as session:
        counts = dict(
            (
                await session.execute(
                    text("SELECT tenant_id, count(*) FROM tenant_meetings GROUP BY tenant_id")
                )
            ).all()
        )
    assert counts == {ACME: len(made[ACME]) + 152, GLOBEX: 1}


async def test_every_query_is_filtered_by_the_tenant(pgstack_db: Database) -> None:
    # proves: R7
    made = await seed(pgstack_db)
    theirs = made[GLOBEX][0]
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Meeting)
            assert sorted(m.title for m in await repo.list()) == ["a1", "a2", "a3"]
            assert await repo.count() == 3 and (await repo.page()).total == 3
            assert len((await repo.page_after(limit=10)).items) == 3
            assert await repo.get_or_none(theirs) is None
            assert not await repo.exists(title="g1")
            with pytest.raises(NotFoundError):
                await repo.update(theirs, title="hijacked")
            with pytest.raises(NotFoundError):
                await repo.delete(theirs)
            with pytest.raises(NotFoundError):
                await repo.hard_delete(theirs)
            assert await repo.update_many({"slot": 9}, all_rows=True) == 3
            assert await repo.delete_many(Eq("title", "g1")) == 0
    with tenant_context(GLOBEX):
        async with pgstack_db.session() as session:
            untouched = await Repository(session, Meeting).get(theirs)
            assert (untouched.title, untouched.slot) == ("g1", 0)


async def test_without_a_tenant_the_repository_refuses(pgstack_db: Database) -> None:
    # proves: R7
    await seed(pgstack_db)
    async with pgstack_db.session() as session:
        repo = Repository(session, Meeting)
        for attempt in (
            repo.list(),
            repo.count(),
            repo.get(uuid.uuid4()),
            repo.page(),
            repo.create(title="orphan"),
            repo.update_many({"slot": 1}, all_rows=True),
        ):
            with pytest.raises(TenantScopeError, match="No tenant in context") as info:
                await attempt
            assert info.value.status_code == 403
        # A plain ORM insert outside the repository is stamped by the column default, and
        # without a tenant it is refused as well.
        session.add(Meeting(title="sneaky"))
        with pytest.raises(TenantScopeError):
            await session.flush()
        await session.rollback()


async def test_writing_for_another_tenant_is_refused(pgstack_db: Database) -> None:
    # proves: R7
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Meeting)
            with pytest.raises(TenantScopeError, match="another tenant"):
                await repo.create(title="x", tenant_id=GLOBEX)
            with pytest.raises(TenantScopeError, match="another tenant"):
                await repo.create(Meeting(title="x", tenant_id=GLOBEX))
            with pytest.raises(TenantScopeError, match="another tenant"):
                await repo.create_many([{"title": "x", "tenant_id": GLOBEX}])


async def test_an_upsert_never_takes_over_another_tenants_row(pgstack_db: Database) -> None:
    # proves: R7
    with tenant_context(GLOBEX):
        async with pgstack_db.transaction() as session:
            await Repository(session, Domain).create(host="shared.example")
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            with pytest.raises(ConflictError):
                await Repository(session, Domain).upsert({"host": "shared.example"}, on=["host"])
    with tenant_context(GLOBEX):
        async with pgstack_db.session() as session:
            assert await Repository(session, Domain).count(host="shared.example") == 1


@pytest.mark.parametrize("returning", [False, True])
async def test_upsert_many_stamps_the_tenant_and_never_takes_over_another_tenants_row(
    pgstack_db: Database, returning: bool
) -> None:
    # proves: R7
    with tenant_context(GLOBEX):
        async with pgstack_db.transaction() as session:
            await Repository(session, Domain).create(host="shared.example")
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Domain)
            hosts = [{"host": "a.example"}, {"host": "b.example"}]
            result = await repo.upsert_many(hosts, on=["host"], returning=returning)
            assert (len(result) if isinstance(result, list) else result) == 2
            again = await repo.upsert_many(hosts[:1], on=["host"], returning=returning)
            assert (len(again) if isinstance(again, list) else again) == 1
        with pytest.raises(ConflictError, match="1 Domain row"):
            async with pgstack_db.transaction() as session:
                await Repository(session, Domain).upsert_many(
                    [{"host": "c.example"}, {"host": "shared.example"}],
                    on=["host"],
                    returning=returning,
                )
        async with pgstack_db.transaction() as session:
            with pytest.raises(TenantScopeError, match="another tenant"):
                await Repository(session, Domain).upsert_many(
                    [{"host": "d.example", "tenant_id": GLOBEX}], on=["host"], returning=returning
                )
    async with pgstack_db.session() as session:
        owners = dict(
            (await session.execute(text("SELECT host, tenant_id FROM tenant_domains"))).all()
        )
    assert owners == {"shared.example": GLOBEX, "a.example": ACME, "b.example": ACME}


async def test_all_tenants_lifts_the_scope_on_purpose(pgstack_db: Database) -> None:
    # proves: R7
    await seed(pgstack_db)
    with all_tenants():
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Meeting)
            assert await repo.count() == 4
            with pytest.raises(TenantScopeError, match="explicit tenant_id"):
                await repo.create(title="whose?")
            made = await repo.create(title="explicit", tenant_id=GLOBEX)
            assert made.tenant_id == GLOBEX


async def test_concurrent_tasks_keep_their_own_tenant(pgstack_db: Database) -> None:
    # proves: R7
    await seed(pgstack_db)

    async def titles(tenant: uuid.UUID) -> list[str]:
        with tenant_context(tenant):
            await asyncio.sleep(0)
            async with pgstack_db.session() as session:
                await asyncio.sleep(0)
                return sorted(m.title for m in await Repository(session, Meeting).list())

    acme, globex = await asyncio.gather(titles(ACME), titles(GLOBEX))
    assert (acme, globex) == (["a1", "a2", "a3"], ["g1"])
