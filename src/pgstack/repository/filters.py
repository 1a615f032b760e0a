"""Filters and sorts: small dataclasses that turn themselves into SQL over allowed fields only.

A filter names a field by its attribute name; the repository resolves the name against the
fields it allows, so a name that is not allowed (or is not a column at all, like
`"id; DROP TABLE x"`) is an InvalidQueryError and never reaches SQL. Values are always bound
parameters.

Negations are true complements: `Ne("status", "x")` and `NotIn(...)` also match rows whose
field is NULL, exactly the rows `Eq` / `In` do not match.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from sqlalchemy import and_, false, or_, true
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from pgstack.errors import InvalidQueryError


@dataclass(frozen=True, slots=True)
class ResolvedField:
    """A field a filter may use: its column, whether it can be NULL, how to read text input."""

    name: str
    column: InstrumentedAttribute[Any]
    nullable: bool
    is_text: bool
    coerce: Callable[[Any], Any]


class Fields(Protocol):
    """What a filter needs from a repository: the allowed fields by name."""

    def resolve(self, name: str) -> ResolvedField:
        """The field called `name`, or InvalidQueryError if it may not be filtered on."""
        ...


class Filter(ABC):
    """Base of all filters; combine them with `&` (AND) and `|` (OR)."""

    __slots__ = ()

    @abstractmethod
    def clause(self, fields: Fields) -> ColumnElement[bool]:
        """The SQL condition over `fields`."""

    def __and__(self, other: Filter) -> And:
        return And(self, other)

    def __or__(self, other: Filter) -> Or:
        return Or(self, other)


@dataclass(frozen=True, slots=True)
class Eq(Filter):
    """`field = value`; `Eq(field, None)` is `field IS NULL`."""

    field: str
    value: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        value = f.coerce(self.value)
        return f.column.is_(None) if value is None else f.column == value


@dataclass(frozen=True, slots=True)
class Ne(Filter):
    """`field <> value`, NULLs included; `Ne(field, None)` is `field IS NOT NULL`."""

    field: str
    value: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        value = f.coerce(self.value)
        if value is None:
            return f.column.is_not(None)
        if f.nullable:
            return or_(f.column != value, f.column.is_(None))
        clause: ColumnElement[bool] = f.column != value
        return clause


def _split_null(f: ResolvedField, values: Iterable[Any]) -> tuple[list[Any], bool]:
    present: list[Any] = []
    has_null = False
    for value in values:
        value = f.coerce(value)
        if value is None:
            has_null = True
        else:
            present.append(value)
    return present, has_null


@dataclass(frozen=True, slots=True)
class In(Filter):
    """`field IN (values)`; a None among the values also matches NULL; no values match nothing."""

    field: str
    values: Sequence[Any]

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        present, has_null = _split_null(f, _sequence(self.field, self.values))
        parts: list[ColumnElement[bool]] = []
        if present:
            parts.append(f.column.in_(present))
        if has_null:
            parts.append(f.column.is_(None))
        return or_(*parts) if parts else false()


@dataclass(frozen=True, slots=True)
class NotIn(Filter):
    """`field NOT IN (values)`, NULLs included unless None is among the values."""

    field: str
    values: Sequence[Any]

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        present, has_null = _split_null(f, _sequence(self.field, self.values))
        if has_null:
            return (
                and_(f.column.is_not(None), f.column.not_in(present))
                if present
                else f.column.is_not(None)
            )
        if not present:
            return true()
        if f.nullable:
            return or_(f.column.not_in(present), f.column.is_(None))
        return f.column.not_in(present)


def _pattern(f: ResolvedField, kind: str, pattern: Any) -> str:
    if not f.is_text:
        raise InvalidQueryError(f"{kind} applies to text fields; {f.name!r} is not one.")
    if not isinstance(pattern, str):
        raise InvalidQueryError(f"{kind} on {f.name!r} needs a text pattern.")
    return pattern


@dataclass(frozen=True, slots=True)
class Like(Filter):
    """`field LIKE pattern` (case-sensitive; `%` any run of characters, `_` one character)."""

    field: str
    pattern: str

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        return f.column.like(_pattern(f, "like", self.pattern))


@dataclass(frozen=True, slots=True)
class ILike(Filter):
    """`field ILIKE pattern` (case-insensitive LIKE)."""

    field: str
    pattern: str

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        return f.column.ilike(_pattern(f, "ilike", self.pattern))


@dataclass(frozen=True, slots=True)
class Between(Filter):
    """`low <= field <= high` (both ends included)."""

    field: str
    low: Any
    high: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        low, high = f.coerce(self.low), f.coerce(self.high)
        if low is None or high is None:
            raise InvalidQueryError(f"between on {self.field!r} needs two values.")
        return f.column.between(low, high)


def _bound(f: ResolvedField, kind: str, value: Any) -> Any:
    value = f.coerce(value)
    if value is None:
        raise InvalidQueryError(f"{kind} on {f.name!r} needs a value, not null.")
    return value


@dataclass(frozen=True, slots=True)
class Lt(Filter):
    """`field < value` (also spelled `Before`)."""

    field: str
    value: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        clause: ColumnElement[bool] = f.column < _bound(f, "lt", self.value)
        return clause


@dataclass(frozen=True, slots=True)
class Le(Filter):
    """`field <= value`."""

    field: str
    value: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        clause: ColumnElement[bool] = f.column <= _bound(f, "le", self.value)
        return clause


@dataclass(frozen=True, slots=True)
class Gt(Filter):
    """`field > value` (also spelled `After`)."""

    field: str
    value: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        clause: ColumnElement[bool] = f.column > _bound(f, "gt", self.value)
        return clause


@dataclass(frozen=True, slots=True)
class Ge(Filter):
    """`field >= value`."""

    field: str
    value: Any

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        clause: ColumnElement[bool] = f.column >= _bound(f, "ge", self.value)
        return clause


Before = Lt
After = Gt


@dataclass(frozen=True, slots=True)
class IsNull(Filter):
    """`field IS NULL`, or with `is_null=False`, `field IS NOT NULL`."""

    field: str
    is_null: bool = True

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        f = fields.resolve(self.field)
        return f.column.is_(None) if self.is_null else f.column.is_not(None)


@dataclass(frozen=True, slots=True, init=False)
class And(Filter):
    """All of the filters (no filters: everything)."""

    filters: tuple[Filter, ...]

    def __init__(self, *filters: Filter) -> None:
        object.__setattr__(self, "filters", _filters(filters))

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        if not self.filters:
            return true()
        return and_(*(f.clause(fields) for f in self.filters))


@dataclass(frozen=True, slots=True, init=False)
class Or(Filter):
    """Any of the filters (no filters: nothing)."""

    filters: tuple[Filter, ...]

    def __init__(self, *filters: Filter) -> None:
        object.__setattr__(self, "filters", _filters(filters))

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        if not self.filters:
            return false()
        return or_(*(f.clause(fields) for f in self.filters))


def _filters(filters: Iterable[Any]) -> tuple[Filter, ...]:
    result = tuple(filters)
    for item in result:
        if not isinstance(item, Filter):
            raise InvalidQueryError(f"{item!r} is not a filter (Eq, In, And, ...).")
    return result


def _sequence(name: str, values: Any) -> Sequence[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise InvalidQueryError(f"in / not_in on {name!r} needs a list of values.")
    return values if isinstance(values, Sequence) else tuple(values)


@dataclass(frozen=True, slots=True)
class Sort:
    """Order by `field`, ascending unless `descending`; `Sort.parse("-created_at")`."""

    field: str
    descending: bool = False

    @classmethod
    def parse(cls, text: str) -> Sort:
        """`name` ascending, `-name` descending (`+name` ascending too)."""
        text = text.strip()
        if text.startswith("-"):
            return cls(text[1:].strip(), True)
        return cls(text.removeprefix("+").strip())

    def __str__(self) -> str:
        return f"-{self.field}" if self.descending else self.field


SortSpec = Sort | str


def sorts(spec: SortSpec | Iterable[SortSpec] | None) -> tuple[Sort, ...]:
    """Sorts from `Sort` objects or `"-name"` strings (comma-separated lists allowed)."""
    if spec is None:
        return ()
    items: Iterable[SortSpec] = [spec] if isinstance(spec, Sort | str) else spec
    result: list[Sort] = []
    for item in items:
        if isinstance(item, Sort):
            result.append(item)
        elif isinstance(item, str):
            result.extend(Sort.parse(part) for part in item.split(",") if part.strip())
        else:
            raise InvalidQueryError(f"{item!r} is not a sort: use Sort(...) or 'field' / '-field'.")
    return tuple(result)


# -- query-string form ---------------------------------------------------------------------

OPERATORS: dict[str, str] = {
    "eq": "equal",
    "ne": "not equal",
    "in": "one of a comma-separated list",
    "not_in": "none of a comma-separated list",
    "like": "LIKE pattern",
    "ilike": "case-insensitive LIKE pattern",
    "between": "two comma-separated bounds, both included",
    "lt": "less than",
    "le": "less than or equal",
    "gt": "greater than",
    "ge": "greater than or equal",
    "before": "before (less than)",
    "after": "after (greater than)",
    "isnull": "true or false",
}
_ALIASES = {"lte": "le", "gte": "ge", "nin": "not_in", "notin": "not_in", "neq": "ne"}


def text_to_bool(value: str) -> bool:
    """`true`/`false` (also 1/0, yes/no, on/off, t/f) in any case; ValueError otherwise."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on", "t"):
        return True
    if lowered in ("false", "0", "no", "off", "f"):
        return False
    raise ValueError(value)


@dataclass(frozen=True)
class QuerySpec:
    """Filters, sorts and paging read from a query string."""

    filters: tuple[Filter, ...] = ()
    sort: tuple[Sort, ...] = ()
    limit: int | None = None
    offset: int | None = None
    cursor: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


QueryParams = str | Mapping[str, Any] | Iterable[tuple[str, str]]


def _pairs(params: QueryParams) -> list[tuple[str, str]]:
    if isinstance(params, str):
        return parse_qsl(params.removeprefix("?"), keep_blank_values=True)
    multi = getattr(params, "multi_items", None)  # Starlette's QueryParams
    if callable(multi):
        return [(str(k), str(v)) for k, v in multi()]
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for key, value in params.items():
            if isinstance(value, list | tuple):
                pairs.extend((str(key), str(v)) for v in value)
            else:
                pairs.append((str(key), str(value)))
        return pairs
    return [(str(k), str(v)) for k, v in params]


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidQueryError(f"{name} must be a whole number, not {text[:40]!r}.") from None


def parse_query(params: QueryParams, *, ignore: Iterable[str] = ()) -> QuerySpec:
    """Filters and sorts from query-string form: `name__ilike=a%&age__ge=18&sort=-created_at`.

    `field=value` is equality; `field__op=value` uses one of OPERATORS; `sort`, `limit`,
    `offset` and `cursor` are paging; names in `ignore` are kept aside in `extra`. Field names
    are checked when a repository applies the filters.
    """
    skipped = set(ignore)
    filters: list[Filter] = []
    sort: list[Sort] = []
    limit = offset = None
    cursor = None
    extra: dict[str, str] = {}
    for key, value in _pairs(params):
        if key in skipped:
            extra[key] = value
        elif key == "sort":
            sort.extend(sorts(value))
        elif key == "limit":
            limit = _int("limit", value)
        elif key == "offset":
            offset = _int("offset", value)
        elif key == "cursor":
            cursor = value or None
        else:
            filters.append(_filter_from(key, value))
    return QuerySpec(tuple(filters), tuple(sort), limit, offset, cursor, extra)


def _filter_from(key: str, value: str) -> Filter:
    name, sep, op = key.rpartition("__")
    if not sep:
        name, op = key, "eq"
    op = _ALIASES.get(op, op)
    if op not in OPERATORS:
        raise InvalidQueryError(
            f"Unknown operator {op[:40]!r} in {key[:80]!r}; use one of: {', '.join(OPERATORS)}."
        )
    if op == "eq":
        return Eq(name, value)
    if op == "ne":
        return Ne(name, value)
    if op in ("in", "not_in"):
        values = value.split(",") if value else []
        return In(name, values) if op == "in" else NotIn(name, values)
    if op == "like":
        return Like(name, value)
    if op == "ilike":
        return ILike(name, value)
    if op == "between":
        parts = value.split(",")
        if len(parts) != 2:
            raise InvalidQueryError(f"{key[:80]} needs two comma-separated values: low,high.")
        return Between(name, parts[0], parts[1])
    if op == "isnull":
        try:
            return IsNull(name, text_to_bool(value))
        except ValueError:
            raise InvalidQueryError(
                f"{key[:80]} takes true or false, not {value[:40]!r}."
            ) from None
    return _COMPARISONS[op](name, value)


_COMPARISONS: dict[str, Callable[[str, Any], Filter]] = {
    "lt": Lt,
    "le": Le,
    "gt": Gt,
    "ge": Ge,
    "before": Lt,
    "after": Gt,
}
