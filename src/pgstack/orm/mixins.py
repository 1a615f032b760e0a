"""Column mixins: primary keys, timestamps, actors, soft delete, versions, tenant scope.

Each works on any declarative base, alone or combined:

    class Note(UUIDPrimaryKey, Timestamped, SoftDelete, Versioned, Base):
        __tablename__ = "notes"
        body: Mapped[str]
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Integer, Text, Uuid, event, func
from sqlalchemy.orm import Mapped, Mapper, mapped_column
from uuid_utils.compat import uuid7

from pgstack.orm.context import current_actor, require_tenant
from pgstack.orm.types import UTCDateTime


def new_uuid7() -> uuid.UUID:
    """A time-ordered UUID (version 7): sorts by creation time, so B-tree inserts stay local."""
    return uuid7()


class UUIDPrimaryKey:
    """`id`: a UUIDv7 made on the client, so batches insert without a round trip per row."""

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), primary_key=True, default=new_uuid7, sort_order=-100
    )


class BigIntPrimaryKey:
    """`id`: a 64-bit identity column numbered by the database."""

    id: Mapped[int] = mapped_column(
        BigInteger, Identity(always=False), primary_key=True, sort_order=-100
    )


class Timestamped:
    """`created_at` / `updated_at`, set by the database; `updated_at` moves on every update.

    ORM flushes, `update()` statements and the repository's bulk paths all set it; the new
    value comes back in the same statement (RETURNING), readable without another query.
    """

    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), server_default=func.now(), nullable=False, sort_order=100
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(),
        server_default=func.now(),
        onupdate=func.now(),
        nullable=False,
        sort_order=101,
    )


def _actor_id() -> str | None:
    actor = current_actor()
    return None if actor is None else str(actor)


class Audited:
    """`created_by` / `updated_by`: the actor set with `acting_as(...)` when the row was written."""

    created_by: Mapped[str | None] = mapped_column(Text, default=_actor_id, sort_order=102)
    updated_by: Mapped[str | None] = mapped_column(
        Text, default=_actor_id, onupdate=_actor_id, sort_order=103
    )


class SoftDelete:
    """`deleted_at`: the repository hides rows that have it unless asked with include_deleted."""

    deleted_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), default=None, nullable=True, sort_order=104
    )

    @property
    def is_deleted(self) -> bool:
        """Whether the row is soft-deleted."""
        return self.deleted_at is not None


class Versioned:
    """`version`: an optimistic lock; a write based on a stale version is a ConflictError.

    The ORM checks and bumps it on every flush (it is the mapper's version_id_col); the
    repository's `update(..., expected_version=n)` checks it in the UPDATE itself.
    """

    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, sort_order=105)


def _tenant_default() -> Any:
    return require_tenant("an insert into a tenant-scoped table")


class TenantScoped:
    """`tenant_id`: marks the model tenant-scoped for the repository.

    The repository filters every query by the tenant in context and stamps it on every
    insert; with no tenant in context it refuses to run.
    """

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), nullable=False, index=True, default=_tenant_default, sort_order=-50
    )


@event.listens_for(Timestamped, "instrument_class", propagate=True)
def _fetch_server_values(mapper: Mapper[Any], cls: type) -> None:
    # Without eager defaults the ORM expires `updated_at` after an UPDATE, and reading it
    # later would need a query an async session cannot make implicitly.
    if mapper.eager_defaults == "auto":
        mapper.eager_defaults = True


@event.listens_for(Versioned, "instrument_class", propagate=True)
def _use_version_column(mapper: Mapper[Any], cls: type) -> None:
    if mapper.version_id_col is None and "version" in mapper.local_table.c:
        mapper.version_id_col = mapper.local_table.c.version
