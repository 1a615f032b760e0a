"""Column types: encrypted text, JSONB with change tracking, UTC datetimes, e-mail addresses."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, String, Text, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.base import SchemaEventTarget
from sqlalchemy.types import TypeDecorator

from pgstack.crypto import get_key_ring
from pgstack.errors import EncryptionError
from pgstack.orm.tracking import TrackedJSON


class EncryptedText(TypeDecorator[str], SchemaEventTarget):
    """Text encrypted at rest with AES-256-GCM under the key ring's newest key.

    Each value is bound to its table and column: copied elsewhere, or altered, it fails to
    decrypt with an EncryptionError instead of yielding wrong data. Renaming the table or
    column changes that binding: pin the old one with `EncryptedText(context="table.column")`.
    Use one EncryptedText() per column; values never appear in reprs or `to_dict()`.
    """

    impl = Text
    cache_ok = True

    def __init__(self, context: str | None = None) -> None:
        super().__init__()
        self.context = context
        self._column: Column[Any] | None = None
        self._bound: str | None = context

    def _set_parent(self, parent: SchemaEventTarget, outer: bool = False, **kw: Any) -> None:
        # SQLAlchemy hands schema-aware types the column they belong to (as for Enum).
        if isinstance(parent, Column):
            self._column = parent
            self._bound = self.context

    def _context(self) -> str:
        bound = self._bound
        if bound is None:
            column = self._column
            table = getattr(column, "table", None)
            if column is None or table is None:
                raise EncryptionError(
                    "EncryptedText is not attached to a table column, so its values cannot be "
                    "bound to one: use it in a mapped column, or pass context='table.column'."
                )
            bound = self._bound = f"{table.fullname}.{column.name}"
        return bound

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise EncryptionError(
                f"EncryptedText stores text; got {type(value).__name__}. Encode it first."
            )
        return get_key_ring().encrypt(value, self._context())

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return get_key_ring().decrypt_text(value, self._context())

    def copy(self, **kw: Any) -> EncryptedText:
        copied = EncryptedText(self.context)
        copied._column = self._column
        return copied


class JSONB(TypeDecorator[Any]):
    """JSON stored as PostgreSQL JSONB; in-place changes at any depth are saved.

    Python None is SQL NULL (so `is null` filters work); use `sqlalchemy.null()` / JSON
    `null` deliberately if you need the JSON null value.
    """

    impl = postgresql.JSONB
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(none_as_null=True)


# Every column typed JSONB, however it was declared, gets nested change tracking.
TrackedJSON.associate_with(JSONB)


class UTCDateTime(TypeDecorator[datetime]):
    """A `timestamptz` that takes only timezone-aware datetimes and returns them in UTC.

    A naive datetime is refused rather than guessed: its meaning depends on the machine.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(
                    f"naive datetime {value.isoformat()} given for a UTC column: pass an aware "
                    "one, e.g. datetime.now(UTC) or value.replace(tzinfo=UTC)"
                )
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _as_utc(value)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        # One call per value (the decorator's default wraps process_result_value in another),
        # when the driver's own processor has nothing to do: every row read pays for this.
        if self.impl_instance.result_processor(dialect, coltype) is None:
            return _as_utc
        return super().result_processor(dialect, coltype)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is not UTC:
        return value.astimezone(UTC)
    return value


class Email(TypeDecorator[str]):
    """An e-mail address compared case-insensitively: stored trimmed and lower-cased.

    Normalising on the way in lets a plain unique index and plain `=` (index-backed) do the
    case-insensitive work, with no `citext` extension to install; comparisons and filters
    against the column are normalised the same way.
    """

    impl = String(320)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return normalise_email(value)


def normalise_email(value: str | None) -> str | None:
    """An address as the Email type stores it: NFKC-normalised, trimmed and case-folded.

    NFKC turns compatibility forms (a Kelvin sign, full-width letters) into the plain letter,
    so look-alike spellings of one address meet in one stored form.
    """
    return None if value is None else unicodedata.normalize("NFKC", value).strip().casefold()


def _normalise_on_set(target: Any, value: Any, oldvalue: Any, initiator: Any) -> Any:
    return normalise_email(value) if isinstance(value, str) else value


@event.listens_for(Mapper, "mapper_configured")
def _track_email_attributes(mapper: Mapper[Any], cls: type) -> None:
    # Normalise on assignment too, so the object shows the stored form before any reload.
    for prop in mapper.column_attrs:
        if prop.parent is mapper and any(isinstance(c.type, Email) for c in prop.columns):
            event.listen(
                getattr(cls, prop.key), "set", _normalise_on_set, retval=True, propagate=True
            )


def python_type_of(type_: Any) -> type | None:
    """The Python type a column type holds; a TypeDecorator answers for its underlying type."""
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    try:
        python_type: type = type_.python_type
    except NotImplementedError:
        return None
    return python_type


def is_secret(column: Any) -> bool:
    """Whether a column is marked secret (`info={"secret": True}`) or encrypted."""
    info = getattr(column, "info", None)
    return bool(info and info.get("secret")) or isinstance(
        getattr(column, "type", None), EncryptedText
    )
