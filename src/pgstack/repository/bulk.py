"""Bulk verbs: create_many (COPY for big batches), update_many, upsert_many, delete_many."""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice, repeat
from operator import add, itemgetter
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar, cast, overload

from sqlalchemy import (
    ARRAY,
    ClauseElement,
    CursorResult,
    Enum,
    String,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy import delete as sa_delete
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import bindparam
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

from pgstack.errors import ConflictError, DatabaseUnavailableError, InvalidQueryError
from pgstack.repository.core import POPULATE, M
from pgstack.repository.filters import Filter
from pgstack.repository.write import WriteOps

# Measured with benchmarks/copy_threshold.py on PostgreSQL 15 and 18 (2 cores): COPY gains
# only 1.0-1.3x below 100 rows (a fraction of a millisecond), 1.3-1.6x at 100, and 2-2.4x
# from 10,000 rows on. Smaller batches stay INSERTs, which keep SQLAlchemy's echo, metrics
# and events in the picture.
COPY_THRESHOLD = 100


class _CopyContext:
    """Stands in for SQLAlchemy's execution context when a column default takes one."""

    __slots__ = ("_row",)

    def __init__(self, row: Mapping[str, Any]) -> None:
        self._row = row

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> Mapping[str, Any]:
        return self._row

    @property
    def current_parameters(self) -> Mapping[str, Any]:
        return self._row


class _ArrayOf(UserDefinedType[list[Any]]):
    """A one-dimensional array parameter holding one column's values, for `unnest`.

    Each value goes through the column type's own bind processing, as it would in a VALUES
    row, so encryption, normalisation and JSON encoding are the same either way.
    """

    cache_ok = True

    def __init__(self, spec: str, item: TypeEngine[Any]) -> None:
        self.spec = spec
        self.item = item

    def get_col_spec(self, **kw: Any) -> str:
        return f"{self.spec}[]"

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        process = self.item.dialect_impl(dialect).bind_processor(dialect)
        if process is None:
            return None

        def convert(values: list[Any]) -> list[Any]:
            return [process(value) for value in values]

        return convert


def _array_spec(column_type: TypeEngine[Any], dialect: Dialect) -> str | None:
    """The element type of an array parameter for a column, or None if it cannot be one."""
    if column_type._has_bind_expression:
        return None  # the type wraps its parameter in SQL, which only a VALUES row keeps
    base = column_type
    while isinstance(base, TypeDecorator):
        base = base.impl_instance
    if isinstance(base, ARRAY | BIT):
        return None  # unnest flattens nested arrays; a BIT(n) cast would cut values short
    if isinstance(base, String) and not (isinstance(base, Enum) and base.native_enum):
        # An explicit VARCHAR(n) or CHAR(n) cast truncates silently, where storing text in
        # the column checks the length: cast to text and let the column do that.
        return "TEXT"
    try:
        return str(column_type.compile(dialect=dialect))
    except SQLAlchemyError:
        return None


@dataclass(frozen=True, slots=True)
class _CopyPlan:
    """How rows with one set of keys become COPY records."""

    #: Column names: the given keys' (tenant_id stamped last if not given), then defaulted ones.
    names: list[str]
    #: The Python-side defaults of the columns the rows leave out, in `names` order.
    defaults: tuple[Any, ...]
    #: (position, bind processor) for the columns whose type converts values on the way in.
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]


@dataclass(frozen=True, slots=True)
class _UnnestPlan:
    """How rows with one set of keys become the arrays of `INSERT ... SELECT FROM unnest`."""

    #: Columns inserted: the ones the rows give, then those with Python-side defaults.
    columns: tuple[Any, ...]
    given: tuple[str, ...]
    defaults: tuple[Any, ...]
    params: tuple[str, ...]
    rows: Any

    def parameters(self, data: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """One list per column: the rows' values, then each row's Python default."""
        arrays = _columns(data, self.given)
        arrays += [_default_values(default, data) for default in self.defaults]
        return dict(zip(self.params, arrays, strict=True))


def _reads_row(default: Any) -> bool:
    """Whether a Python-side column default is a function of the row's values."""
    if default.is_scalar:
        return False
    # SQLAlchemy wraps a function of no arguments to ignore the context; `_fn` is the original.
    plain = getattr(default, "_fn", None)
    return plain is None or default.arg is plain


def _default_values(default: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """A Python-side column default's value for each row (a row as its INSERT would see it)."""
    if default.is_scalar:
        return [default.arg] * len(rows)
    if not _reads_row(default):
        plain = default._fn
        return [plain() for _ in rows]
    make = default.arg
    return [make(_CopyContext(row)) for row in rows]


T = TypeVar("T")
#: What the bulk writes take: a list, or any iterable or async iterable, streamed in batches.
Rows: TypeAlias = Iterable[T] | AsyncIterable[T]


async def _batches(rows: Rows[T], size: int) -> AsyncIterator[list[T]]:
    """Lists of up to `size` items of `rows`, taken as they come."""
    if isinstance(rows, AsyncIterable):
        batch: list[T] = []
        async for row in rows:
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


class BulkOps(WriteOps[M]):
    """Many rows in one go."""

    #: Batches of at least this many rows go through COPY (see COPY_THRESHOLD).
    copy_threshold: ClassVar[int] = COPY_THRESHOLD
    #: Rows per batch when `create_many`/`upsert_many` stream an iterator (memory: one batch).
    stream_batch_size: ClassVar[int] = 10_000

    async def _streamed(
        self, write: Callable[..., Any], rows: Rows[Any], **options: Any
    ) -> int | list[M]:
        """`write` each batch of `rows` (an iterable or async iterable); the counts or rows."""
        written: int = 0
        made: list[M] = []
        async for batch in _batches(rows, self.stream_batch_size):
            result = await write(batch, **options)
            if options.get("returning"):
                made.extend(result)
            else:
                written += result
        return made if options.get("returning") else written

    def _row_dict(self, row: M | Mapping[str, Any]) -> dict[str, Any]:
        """The fields a row gives, as a dict; a plain dict is returned as it is (not copied)."""
        if type(row) is dict:
            return row
        if isinstance(row, self.model):
            loaded = sa_inspect(row).dict
            return {k: loaded[k] for k in self._info.columns if k in loaded}
        if isinstance(row, Mapping):
            return dict(row)
        raise InvalidQueryError(
            f"Rows for {self._info.name} must be mappings or {self._info.name} objects."
        )

    def _rows(self, rows: Iterable[M | Mapping[str, Any]]) -> list[dict[str, Any]]:
        checked: set[tuple[str, ...]] = set()
        result: list[dict[str, Any]] = []
        stamp = self._info.tenant_scoped
        for row in rows:
            # Plain dicts first: the common case, and cheaper than an ABC isinstance check.
            data = row.copy() if type(row) is dict else self._row_dict(row)
            keys = tuple(data)
            if keys not in checked:
                self._writable(data, managed_ok=True)
                checked.add(keys)
            result.append(self._stamp(data) if stamp else data)
        return result

    @overload
    async def create_many(
        self, rows: Rows[M | Mapping[str, Any]], *, returning: Literal[False] = False
    ) -> int: ...

    @overload
    async def create_many(
        self, rows: Rows[M | Mapping[str, Any]], *, returning: Literal[True]
    ) -> list[M]: ...

    async def create_many(
        self, rows: Rows[M | Mapping[str, Any]], *, returning: bool = False
    ) -> int | list[M]:
        """Insert many rows; returns how many (or, with `returning=True`, the rows themselves).

        Batches of `copy_threshold` rows or more stream through PostgreSQL's COPY on the
        session's own connection and transaction. Smaller ones are one INSERT pipelined for
        all rows (asyncpg's executemany, which measured a little faster than a multi-row
        VALUES); `returning=True` is a multi-row INSERT ... RETURNING. Defaults are filled
        either way. A row may give a SQL expression as a value (`literal_column(...)`,
        `func.now()`): the session's unit of work then writes the batch, slower, each such
        row's INSERT carrying its expression.

        `rows` may be a list, or any iterable or async iterable (a generator, a file read
        line by line): it is then written in batches of `stream_batch_size` rows, each as
        above, in the session's transaction, so memory holds one batch, not the input.
        """
        if not isinstance(rows, list | tuple):
            return await self._streamed(self.create_many, rows, returning=returning)
        if not returning:
            rows = rows if isinstance(rows, list) else list(rows)
            if len(rows) >= self.copy_threshold and await self._copy(rows):
                return len(rows)
        data = self._rows(rows)
        if not data:
            return [] if returning else 0
        computed = [i for i, row in enumerate(data) if any(map(_is_sql, row.values()))]
        if computed:
            # A SQL-expression value cannot travel as a parameter (COPY and executemany both
            # send values): the unit of work writes it into its row's INSERT, and sends the
            # other rows batched as usual.
            objects = [self.model(**row) for row in data]
            self.session.add_all(objects)
            await self._flush()
            if not returning:
                return len(objects)
            # The flush leaves those attributes expired: read the rows back in one statement.
            info = self._info
            keys = [getattr(objects[i], info.pk_key) for i in computed]
            await self._read(
                select(self.model).where(info.pk.in_(keys)).execution_options(**POPULATE)
            )
            return objects
        if returning:
            statement = insert(self.model).returning(self.model, sort_by_parameter_order=True)
            result = await self._write(statement, data)
            return list(result.scalars().all())
        await self._write(insert(self.model), data)
        return len(data)

    async def _copy(self, rows: list[M | Mapping[str, Any]]) -> bool:
        """COPY the rows in; False (nothing done) when a value or default needs SQL."""
        info = self._info
        batches = self._copy_batches(rows, self.session.get_bind().dialect)
        if batches is None:
            return False
        # COPY bypasses the ORM, so send pending objects first (rows may refer to them).
        await self._flush()
        connection = await self.session.connection()
        raw = await connection.get_raw_connection()
        adapted: Any = raw.dbapi_connection
        if getattr(adapted, "_transaction", None) is None:
            # SQLAlchemy's asyncpg adapter opens its transaction on the first statement; make
            # it do so now, or the COPY would commit on its own, outside the session's work.
            await connection.exec_driver_sql("SELECT 1")
        driver: Any = raw.driver_connection
        for names, records in batches:
            try:
                await driver.copy_records_to_table(
                    info.table.name, records=records, columns=names, schema_name=info.table.schema
                )
            except Exception as exc:
                if driver.is_closed():
                    # The COPY ran beside SQLAlchemy, which must learn the connection is gone
                    # or it would hand it out again (and fail closing it).
                    await connection.invalidate(exc)
                    raise DatabaseUnavailableError(
                        "The connection to PostgreSQL was lost during a COPY. The work was not "
                        "committed; retry it."
                    ) from exc
                raise self._write_error(exc) from exc
        return True

    def _copy_batches(
        self, rows: list[M | Mapping[str, Any]], dialect: Dialect
    ) -> list[tuple[list[str], Iterator[tuple[Any, ...]]]] | None:
        """Column names and COPY records, one batch per set of keys; None if SQL is needed.

        Values are checked and converted in C loops where they can be (`map`, `itemgetter`,
        `zip`): this runs for batches of 100,000 rows, before COPY sends anything, while the
        server waits.
        """
        first = rows[0]
        if type(first) is dict:
            # The usual batch: plain dicts of one length that all hold the first row's keys,
            # so all have exactly its keys. Any other batch is grouped row by row below.
            keys = tuple(first)
            group = cast(list[dict[str, Any]], rows)
            if set(map(type, group)) == {dict} and set(map(len, group)) == {len(keys)}:
                values: list[list[Any]] | None = None
                try:
                    if len(keys) > 1:
                        # One pass over the values: a missing key, and each value's type.
                        row_values = chain.from_iterable(map(itemgetter(*keys), group))
                        kinds = set(map(type, row_values))
                    else:
                        values = _columns(group, keys)
                        kinds = {kind for column in values for kind in set(map(type, column))}
                except KeyError:
                    pass  # a row gives other keys
                else:
                    batch = self._copy_batch(keys, group, kinds, dialect, values)
                    return None if batch is None else [batch]
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in map(self._row_dict, rows):
            groups.setdefault(tuple(row), []).append(row)
        batches = []
        for keys, group in groups.items():
            values = _columns(group, keys)
            kinds = {kind for column in values for kind in set(map(type, column))}
            batch = self._copy_batch(keys, group, kinds, dialect, values)
            if batch is None:
                return None
            batches.append(batch)
        return batches

    def _copy_batch(
        self,
        keys: tuple[str, ...],
        group: list[dict[str, Any]],
        kinds: set[type],
        dialect: Dialect,
        values: list[list[Any]] | None,
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]] | None:
        """COPY column names and records for rows that all give `keys`.

        `kinds` are the types of the rows' values; `values` their columns, or None for plain
        dicts of exactly `keys` (two or more), whose records are then read while COPY sends.
        """
        self._writable(group[0], managed_ok=True)
        info = self._info
        stamp = info.tenant_scoped
        plan_keys = (*keys, "tenant_id") if stamp and "tenant_id" not in keys else keys
        plan = self._copy_plan(plan_keys, dialect)
        if plan is None or any(issubclass(kind, ClauseElement) for kind in kinds):
            return None  # a SQL-expression default or value: only an INSERT carries it
        count = len(group)
        given = len(keys)
        if values is None and (
            (stamp and "tenant_id" in keys) or any(at < given for at, _ in plan.converters)
        ):
            values = _columns(group, keys)  # checked or converted value by value below
        # The columns after the given ones: the stamped tenant, then the defaults.
        tail: list[list[Any]] = []
        tenants: list[Any] | None = None
        if stamp:
            if "tenant_id" in keys:
                at = keys.index("tenant_id")
                assert values is not None
                tenants = values[at] = list(map(self._tenant_for_insert, values[at]))
            else:
                tenants = [self._tenant_for_insert(None)] * count
                tail.append(tenants)
        context = group
        if tenants is not None and any(map(_reads_row, plan.defaults)):
            # Defaults read the row as an INSERT would: with the tenant stamped.
            context = [{**row, "tenant_id": t} for row, t in zip(group, tenants, strict=True)]
        tail += [_default_values(default, context) for default in plan.defaults]
        columns = [*(values or [[]] * given), *tail]
        for at, process in plan.converters:
            columns[at] = [None if value is None else process(value) for value in columns[at]]
        # The records are made while COPY sends them, each dropped once encoded: a list of
        # them all would make the garbage collector walk the heap on the way.
        if values is not None:
            return plan.names, zip(*columns, strict=True)
        head = map(itemgetter(*keys), group)
        if not tail:
            return plan.names, head
        if not plan.converters and all(default.is_scalar for default in plan.defaults):
            # Only constants follow (the tenant, scalar defaults): one tuple added to each row.
            return plan.names, map(add, head, repeat(tuple(column[0] for column in tail)))
        return plan.names, map(add, head, zip(*columns[given:], strict=True))

    def _copy_plan(self, keys: tuple[str, ...], dialect: Dialect) -> _CopyPlan | None:
        """Column names, Python defaults and bind processors for rows with these keys."""
        info = self._info
        plan_key = ("copy", keys)
        plan = info.statements.get(plan_key)
        if plan is not None:
            return plan or None
        defaults = self._python_defaults(keys)
        if defaults is None:
            info.statements[plan_key] = False  # a SQL-expression default: not for COPY
            return None
        all_keys = [*keys, *defaults]
        processors = [
            info.columns[k]
            .attribute.property.columns[0]
            .type.dialect_impl(dialect)
            .bind_processor(dialect)
            for k in all_keys
        ]
        plan = _CopyPlan(
            names=[info.columns[k].name for k in all_keys],
            defaults=tuple(defaults.values()),
            converters=tuple((i, p) for i, p in enumerate(processors) if p is not None),
        )
        info.statements[plan_key] = plan
        return plan

    def _python_defaults(self, keys: tuple[str, ...]) -> dict[str, Any] | None:
        """The Python-side defaults of the columns `keys` leaves out; None if one is SQL.

        Columns with neither keep their server default (or NULL), as in a VALUES row.
        """
        found: dict[str, Any] = {}
        for key, facts in self._info.columns.items():
            if key in keys:
                continue
            default = facts.attribute.property.columns[0].default
            if default is None:
                continue
            if not (getattr(default, "is_scalar", False) or getattr(default, "is_callable", False)):
                return None
            found[key] = default
        return found

    def _unnest_plan(self, keys: tuple[str, ...]) -> _UnnestPlan | None:
        """The `SELECT ... FROM unnest(...)` of rows with these keys; None if one cannot be."""
        info = self._info
        plan_key = ("unnest", keys)
        plan = info.statements.get(plan_key)
        if plan is not None:
            return plan or None
        defaults = self._python_defaults(keys)
        dialect = self.session.get_bind().dialect
        columns = [info.columns[k].attribute.property.columns[0] for k in keys]
        if defaults is not None:
            columns += [info.columns[k].attribute.property.columns[0] for k in defaults]
        specs = [_array_spec(column.type, dialect) for column in columns]
        if defaults is None or None in specs:
            info.statements[plan_key] = False
            return None
        names = [column.name for column in columns]
        params = tuple(f"pgstack_{i}" for i in range(len(columns)))
        types = [_ArrayOf(cast(str, spec), c.type) for spec, c in zip(specs, columns, strict=True)]
        arrays = [sa_cast(bindparam(p, type_=t), t) for p, t in zip(params, types, strict=True)]
        source = func.unnest(*arrays).table_valued(*names).render_derived(name="pgstack_rows")
        plan = _UnnestPlan(
            columns=tuple(columns),
            given=keys,
            defaults=tuple(defaults.values()),
            params=params,
            rows=select(*(source.c[name] for name in names)),
        )
        info.statements[plan_key] = plan
        return plan

    @overload
    async def upsert_many(
        self,
        rows: Rows[Mapping[str, Any]],
        *,
        on: Sequence[str] | None = None,
        update: Sequence[str] | None = None,
        where: ColumnElement[bool] | None = None,
        returning: Literal[True] = True,
    ) -> list[M]: ...

    @overload
    async def upsert_many(
        self,
        rows: Rows[Mapping[str, Any]],
        *,
        on: Sequence[str] | None = None,
        update: Sequence[str] | None = None,
        where: ColumnElement[bool] | None = None,
        returning: Literal[False],
    ) -> int: ...

    async def upsert_many(
        self,
        rows: Rows[Mapping[str, Any]],
        *,
        on: Sequence[str] | None = None,
        update: Sequence[str] | None = None,
        where: ColumnElement[bool] | None = None,
        returning: bool = True,
    ) -> list[M] | int:
        """Insert or update many rows in one `INSERT ... ON CONFLICT DO UPDATE` statement.

        The rows travel as one array per column (`INSERT ... SELECT FROM unnest(...)`), so
        the batch is one statement whatever its size. Returns the rows in input order, or,
        with `returning=False`, how many rows were written (no objects are built). Every
        row must give the same fields; two rows with the same key are an InvalidQueryError.
        A model with a column type that cannot travel in an array (ARRAY, BIT, a type that
        wraps its parameter in SQL, a SQL-expression default) sends multi-row VALUES instead.

        `rows` may also be any iterable or async iterable: it is then written in batches of
        `stream_batch_size` rows, one statement each, in the session's transaction, with
        memory bounded by the batch. The checks above hold per batch: a key repeated in two
        batches is written twice (the later row wins), not refused.
        """
        if not isinstance(rows, list | tuple):
            return await self._streamed(
                self.upsert_many, rows, on=on, update=update, where=where, returning=returning
            )
        data = self._rows(rows)
        if not data:
            return [] if returning else 0
        first = data[0].keys()
        if any(row.keys() != first for row in data):
            raise InvalidQueryError("upsert_many needs every row to give the same fields.")
        keys = tuple(first)
        statement = self._upsert_statement(keys, on, update, where)
        plan = self._unnest_plan(keys)
        if plan is None:
            return await self._upsert_values(statement, data, on, returning)
        params = plan.parameters(data)
        statement = statement.from_select(plan.columns, plan.rows, include_defaults=False)
        if not returning:
            counted = cast(
                CursorResult[Any],
                await self._write(statement.execution_options(dml_strategy="raw"), params),
            )
            written = int(counted.rowcount)
            self._all_upserted(written, len(data))
            return written
        result = await self._write(
            statement.returning(self.model).execution_options(
                populate_existing=True, dml_strategy="orm"
            ),
            params,
        )
        found = list(result.scalars().all())
        self._all_upserted(len(found), len(data))
        return self._in_input_order(found, data, on)

    async def _upsert_values(
        self,
        statement: Any,
        data: list[dict[str, Any]],
        on: Sequence[str] | None,
        returning: bool,
    ) -> list[M] | int:
        """Upsert as multi-row VALUES (SQLAlchemy sends one statement per 1,000 rows)."""
        if not returning:
            result = await self._write(statement.returning(self._info.pk), data)
            written = len(result.all())
            self._all_upserted(written, len(data))
            return written
        # No sort_by_parameter_order: on conflict the returned key is the existing row's, so
        # SQLAlchemy could only keep order by sending one row per statement. Order by key here.
        result = await self._write(
            statement.returning(self.model).execution_options(populate_existing=True), data
        )
        found = list(result.scalars().all())
        self._all_upserted(len(found), len(data))
        return self._in_input_order(found, data, on)

    def _all_upserted(self, written: int, given: int) -> None:
        if written != given:
            raise ConflictError(
                f"{given - written} {self._info.name} row(s) share a key with rows that "
                "cannot be changed from here."
            )

    def _in_input_order(
        self, found: list[M], data: list[dict[str, Any]], on: Sequence[str] | None
    ) -> list[M]:
        info = self._info
        keys = tuple(on) if on else (info.pk_key,)
        dialect = self.session.get_bind().dialect
        normalise: list[Callable[[Any], Any]] = []
        for key in keys:
            column = info.columns[key]
            column_type = column.attribute.property.columns[0].type
            if isinstance(column_type, TypeDecorator) and not column.secret:
                normalise.append(partial(column_type.process_bind_param, dialect=dialect))
            else:
                normalise.append(_same)
        by_key = {tuple(getattr(row, k) for k in keys): row for row in found}
        ordered = [
            by_key.get(tuple(n(row.get(k)) for n, k in zip(normalise, keys, strict=True)))
            for row in data
        ]
        if any(row is None for row in ordered):
            return found  # keys a type rewrites beyond recognition: database order
        return cast(list[M], ordered)

    def _bulk_where(
        self,
        filters: Sequence[Filter],
        equals: Mapping[str, Any],
        include_deleted: bool,
        all_rows: bool,
        verb: str,
    ) -> list[ColumnElement[bool]]:
        if not filters and not equals and not all_rows:
            raise InvalidQueryError(
                f"{verb} without filters would touch every {self._info.name}; pass "
                "all_rows=True if that is what you mean."
            )
        return self._where(filters, equals, include_deleted)

    async def update_many(
        self,
        values: Mapping[str, Any],
        *filters: Filter,
        include_deleted: bool = False,
        all_rows: bool = False,
        **equals: Any,
    ) -> int:
        """Set the same values on every matching row in one UPDATE; returns how many changed.

        `updated_at`, `updated_by` and `version` move as for single updates. Objects this
        session loaded earlier are not refreshed; repository reads return the new values.
        """
        data = self._writable(values, managed_ok=False)
        if not data:
            raise InvalidQueryError("update_many needs at least one field to set.")
        conditions = self._bulk_where(filters, equals, include_deleted, all_rows, "update_many")
        statement = (
            update(self.model)
            .where(*conditions)
            .values({**self._values(data), **self._change_tracking()})
            .execution_options(synchronize_session=False)
        )
        result = cast(CursorResult[Any], await self._write(statement))
        return int(result.rowcount)

    async def delete_many(
        self,
        *filters: Filter,
        hard: bool = False,
        include_deleted: bool = False,
        all_rows: bool = False,
        **equals: Any,
    ) -> int:
        """Delete every matching row (soft where the model has SoftDelete, unless `hard`)."""
        info = self._info
        if info.soft_delete and not hard:
            conditions = self._bulk_where(filters, equals, False, all_rows, "delete_many")
            statement: Any = (
                update(self.model)
                .where(*conditions)
                .values({info.attribute("deleted_at"): func.now(), **self._change_tracking()})
                .execution_options(synchronize_session=False)
            )
        else:
            conditions = self._bulk_where(
                filters, equals, include_deleted or hard, all_rows, "delete_many"
            )
            statement = (
                sa_delete(self.model)
                .where(*conditions)
                .execution_options(synchronize_session=False)
            )
        result = cast(CursorResult[Any], await self._write(statement))
        return int(result.rowcount)


def _is_sql(value: Any) -> bool:
    return isinstance(value, ClauseElement)


def _columns(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[list[Any]]:
    """Each key's values over the rows, one list per key (KeyError if a row lacks one)."""
    return [list(map(itemgetter(key), rows)) for key in keys]


def _same(value: Any) -> Any:
    return value
