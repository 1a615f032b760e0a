"""The declarative base every pgstack and application model derives from."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from pgstack.orm.model import ModelMixin
from pgstack.orm.types import JSONB, UTCDateTime

# Every constraint and index gets a stable, predictable name, so migrations can refer to it.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# `Mapped[datetime]` is a timezone-aware UTC column; `Mapped[dict[str, Any]]` and
# `Mapped[list[Any]]` are JSONB with in-place changes saved. Reuse it on other bases.
TYPE_ANNOTATION_MAP: dict[Any, Any] = {
    datetime: UTCDateTime(),
    dict[str, Any]: JSONB(),
    list[Any]: JSONB(),
}


class Base(ModelMixin, DeclarativeBase):
    """Declarative base for pgstack and application models.

    It brings pgstack's naming convention, UTC datetimes and JSONB from annotations,
    `to_dict()`, a repr without secrets, and lazy loads that explain themselves.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = TYPE_ANNOTATION_MAP
