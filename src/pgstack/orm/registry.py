"""Registry helpers: list the models of a base, find one by name, describe it, create/drop all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase

from pgstack.errors import NotFoundError, ProductionSafetyError
from pgstack.orm.base import Base
from pgstack.orm.types import is_secret, python_type_of

if TYPE_CHECKING:
    from pgstack.db.database import Database

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class ColumnInfo:
    """One column: attribute and column name, SQL type, nullability, keys and defaults."""

    key: str
    name: str
    type: str
    python_type: str | None
    nullable: bool
    primary_key: bool
    default: str | None
    server_default: str | None
    secret: bool


@dataclass(frozen=True)
class IndexInfo:
    """One index: its stable name, columns (or expressions) and uniqueness."""

    name: str
    columns: tuple[str, ...]
    unique: bool


@dataclass(frozen=True)
class ConstraintInfo:
    """One constraint: name, kind (primary key, unique, foreign key, check) and what it covers."""

    name: str
    kind: str
    columns: tuple[str, ...]
    references: str | None = None
    condition: str | None = None


@dataclass(frozen=True)
class ModelDescription:
    """A model's table as pgstack sees it."""

    name: str
    table: str
    schema: str | None
    columns: tuple[ColumnInfo, ...]
    indexes: tuple[IndexInfo, ...]
    constraints: tuple[ConstraintInfo, ...]
    mixins: tuple[str, ...] = field(default=())

    def column(self, key: str) -> ColumnInfo:
        """The column with this attribute key or column name."""
        for column in self.columns:
            if key in (column.key, column.name):
                return column
        raise NotFoundError(f"{self.name} has no column {key!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The description as plain data (for JSON output)."""
        from dataclasses import asdict

        return asdict(self)


def list_models(base: type[DeclarativeBase] = Base) -> list[type[Any]]:
    """Every mapped class of `base`, sorted by name."""
    return sorted((m.class_ for m in base.registry.mappers), key=lambda cls: cls.__name__)


def get_model(name: str, base: type[DeclarativeBase] = Base) -> type[Any]:
    """The model whose class name or table name is `name`."""
    models = list_models(base)
    for cls in models:
        table = getattr(cls, "__table__", None)
        if name == cls.__name__ or (table is not None and name in (table.name, table.fullname)):
            return cls
    known = ", ".join(cls.__name__ for cls in models) or "none"
    raise NotFoundError(f"No model is named {name!r}; the models are: {known}.")


def describe_model(model: type[Any]) -> ModelDescription:
    """Columns, indexes and constraints of a model, with their stable names."""
    mapper = sa_inspect(model)
    table = mapper.local_table
    if not isinstance(table, Table):
        raise NotFoundError(f"{model.__name__} is not mapped to a table.")
    keys = {col: prop.key for prop in mapper.column_attrs for col in prop.columns}
    return ModelDescription(
        name=model.__name__,
        table=table.name,
        schema=table.schema,
        columns=tuple(_column_info(col, keys.get(col, col.key)) for col in table.columns),
        indexes=tuple(
            IndexInfo(
                name=str(index.name),
                columns=tuple(_expression_name(expr) for expr in index.expressions),
                unique=bool(index.unique),
            )
            for index in sorted(table.indexes, key=lambda i: str(i.name))
        ),
        constraints=tuple(
            _constraint_info(c)
            for c in sorted(table.constraints, key=lambda c: (type(c).__name__, str(c.name)))
        ),
        mixins=tuple(
            base.__name__
            for base in model.__mro__
            if base.__module__ == "pgstack.orm.mixins" and base is not model
        ),
    )


def _expression_name(expr: Any) -> str:
    name = getattr(expr, "name", None)
    return name if isinstance(name, str) else str(expr.compile(dialect=_DIALECT))


def _column_info(column: Column[Any], key: str) -> ColumnInfo:
    held = python_type_of(column.type)
    python_type = held.__name__ if held is not None else None
    default = column.default
    default_text = None
    if default is not None:
        arg = getattr(default, "arg", None)
        default_text = getattr(arg, "__name__", None) or repr(arg)
    server_default = column.server_default
    server_text = None
    if server_default is not None:
        arg = getattr(server_default, "arg", None)
        if isinstance(arg, str):
            server_text = arg
        elif arg is not None:
            server_text = str(arg.compile(dialect=_DIALECT))
    return ColumnInfo(
        key=key,
        name=column.name,
        type=str(column.type.compile(dialect=_DIALECT)),
        python_type=python_type,
        nullable=bool(column.nullable),
        primary_key=column.primary_key,
        default=default_text,
        server_default=server_text,
        secret=is_secret(column),
    )


def _constraint_info(constraint: Any) -> ConstraintInfo:
    columns = tuple(c.name for c in getattr(constraint, "columns", ()))
    if isinstance(constraint, PrimaryKeyConstraint):
        return ConstraintInfo(str(constraint.name), "primary key", columns)
    if isinstance(constraint, UniqueConstraint):
        return ConstraintInfo(str(constraint.name), "unique", columns)
    if isinstance(constraint, ForeignKeyConstraint):
        target = ", ".join(fk.target_fullname for fk in constraint.elements)
        return ConstraintInfo(str(constraint.name), "foreign key", columns, references=target)
    if isinstance(constraint, CheckConstraint):
        condition = str(constraint.sqltext.compile(dialect=_DIALECT))
        return ConstraintInfo(str(constraint.name), "check", columns, condition=condition)
    return ConstraintInfo(str(constraint.name), type(constraint).__name__, columns)


def _target(db: Database | AsyncEngine) -> AsyncEngine:
    if isinstance(db, AsyncEngine):
        return db
    if db.settings.environment == "production":
        raise ProductionSafetyError(
            "create_all/drop_all are for tests and scratch databases; in production the schema "
            "comes from migrations (`pgstack db upgrade`)."
        )
    return db.engine


async def create_all(db: Database | AsyncEngine, base: type[DeclarativeBase] = Base) -> None:
    """Create every table of `base` that does not exist (tests only; refused in production)."""
    async with _target(db).begin() as conn:
        await conn.run_sync(base.metadata.create_all)


async def drop_all(db: Database | AsyncEngine, base: type[DeclarativeBase] = Base) -> None:
    """Drop every table of `base` (tests only; refused in production)."""
    async with _target(db).begin() as conn:
        await conn.run_sync(base.metadata.drop_all)
