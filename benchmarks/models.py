"""The tables every contender works on: pgstack models and plain SQLAlchemy ones, same columns."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

from sqlalchemy import URL, BigInteger, DateTime, Integer, MetaData, String, Text, Uuid, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    ModelMixin,
    SoftDelete,
    TenantScoped,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
)

# One table per workload family, so inserts (W2, W3, W5) never change what reads (W1, W4, W7) see.
ITEMS, INSERTS, BULK, UPSERTS, COUNTERS = (
    "bench_items",
    "bench_inserts",
    "bench_bulk",
    "bench_upserts",
    "bench_counters",
)
# W12: a tenant-scoped table under row-level security.
TENANT_ITEMS = "bench_tenant_items"


class PgBase(ModelMixin, DeclarativeBase):
    """pgstack models, as a pgstack application declares them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class _PgItem(UUIDPrimaryKey, Timestamped, SoftDelete, Versioned):
    name: Mapped[str] = mapped_column(String(100))
    qty: Mapped[int]
    note: Mapped[str | None]


class PgItem(_PgItem, PgBase):
    __tablename__ = ITEMS


class PgInsert(_PgItem, PgBase):
    __tablename__ = INSERTS


class PgBulk(_PgItem, PgBase):
    __tablename__ = BULK


class PgUpsert(_PgItem, PgBase):
    __tablename__ = UPSERTS


class PgCounter(PgBase):
    __tablename__ = COUNTERS
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class PgTenantItem(UUIDPrimaryKey, TenantScoped, PgBase):
    __tablename__ = TENANT_ITEMS
    name: Mapped[str] = mapped_column(String(100))
    qty: Mapped[int]


class PlainBase(DeclarativeBase):
    """Models as a typical SQLAlchemy application writes them (also used by advanced-alchemy)."""


class _PlainItem:
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    qty: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class PlainItem(_PlainItem, PlainBase):
    __tablename__ = ITEMS


class PlainInsert(_PlainItem, PlainBase):
    __tablename__ = INSERTS


class PlainBulk(_PlainItem, PlainBase):
    __tablename__ = BULK


class PlainUpsert(_PlainItem, PlainBase):
    __tablename__ = UPSERTS


class PlainCounter(PlainBase):
    __tablename__ = COUNTERS
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


ITEM_COLUMNS = "id, name, qty, note, created_at, updated_at, deleted_at, version"


async def migrate(url: URL) -> list[str]:
    """Bring the database to the head of pgstack's own migrations, as a user's database is.

    pgstack's tables (identity, tokens, rate limits, the audit log with its triggers) come
    from the migrations, not from `create_all`: sign-ins and API keys write to the audit
    log, whose chain and partitions only the migration makes. Nothing is applied to a
    database already there.
    """
    from pgstack.migrations import MigrationProject
    from pgstack.migrations.api import upgrade_async

    project = MigrationProject(root=_HERE)  # a folder without [tool.pgstack]: pgstack's alone
    return await upgrade_async(url, project=project)


_HERE = Path(__file__).resolve().parent
