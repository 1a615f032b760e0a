"""The declarative base and its naming convention.

Stable constraint and index names, UTC datetimes, JSONB, and a metadata that test models
never leak into.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, MetaData, String, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.db.database import Database
from pgstack.orm import (
    JSONB,
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Base,
    BigIntPrimaryKey,
    ModelMixin,
    TenantScoped,
    UTCDateTime,
)

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class ConventionBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Owner(BigIntPrimaryKey, ConventionBase):
    __tablename__ = "conv_owners"
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Pet(BigIntPrimaryKey, TenantScoped, ConventionBase):
    __tablename__ = "conv_pets"
    __table_args__ = (CheckConstraint("legs >= 0", name="legs_positive"),)
    owner_id: Mapped[int] = mapped_column(ForeignKey("conv_owners.id"), index=True)
    legs: Mapped[int]
    born: Mapped[datetime]
    extra: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]


async def test_constraints_and_indexes_get_stable_names(
    pgstack_db: Database, create_tables: CreateTables
) -> None:
    # proves: M1
    await create_tables(ConventionBase.metadata)
    async with pgstack_db.session() as session:
        constraints = set(
            (
                await session.execute(
                    # PostgreSQL 18 lists NOT NULL as constraints too (contype 'n'); they are
                    # not named by the convention.
                    text(
                        "SELECT conname FROM pg_constraint WHERE conrelid IN "
                        "('conv_owners'::regclass, 'conv_pets'::regclass) AND contype <> 'n'"
                    )
                )
            ).scalars()
        )
        indexes = set(
            (
                await session.execute(
                    text("SELECT indexname FROM pg_indexes WHERE tablename = 'conv_pets'")
                )
            ).scalars()
        )
    assert constraints == {
        "pk_conv_owners",
        "uq_conv_owners_email",
        "pk_conv_pets",
        "fk_conv_pets_owner_id_conv_owners",
        "ck_conv_pets_legs_positive",
    }
    assert indexes == {"pk_conv_pets", "ix_conv_pets_owner_id", "ix_conv_pets_tenant_id"}


def test_annotations_map_to_utc_datetimes_and_jsonb() -> None:
    # proves: M1, M4
    columns = Pet.__table__.c
    assert isinstance(columns.born.type, UTCDateTime)
    assert isinstance(columns.extra.type, JSONB) and isinstance(columns.tags.type, JSONB)
    compiled = columns.born.type.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
    assert compiled == "TIMESTAMP WITH TIME ZONE"
    assert Base.type_annotation_map is TYPE_ANNOTATION_MAP
    for key, template in NAMING_CONVENTION.items():
        assert Base.metadata.naming_convention[key] == template


def test_test_models_stay_out_of_pgstacks_metadata() -> None:
    # proves: M1
    # Test modules define their tables on bases of their own: the migrations' drift check
    # compares pgstack.orm.Base.metadata with the schema and must see only pgstack's tables.
    # (pytest imports every collected test module before the first test runs.)
    importlib.import_module("pgstack.repository")
    foreign = [
        m.class_ for m in Base.registry.mappers if not m.class_.__module__.startswith("pgstack.")
    ]
    assert foreign == []
    assert "conv_pets" in ConventionBase.metadata.tables
    assert "conv_pets" not in Base.metadata.tables
