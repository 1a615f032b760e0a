"""What every repository verb shares: the model's facts (cached), scoping, errors, retries."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Generic, TypeVar, cast

from sqlalchemy import ARRAY, JSON, LargeBinary, Table, bindparam, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapper
from sqlalchemy.sql.elements import ColumnElement

from pgstack.db.lane import cached
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import translate_error
from pgstack.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseUnavailableError,
    InvalidQueryError,
)
from pgstack.orm.context import require_tenant, tenant_scope_lifted
from pgstack.orm.mixins import Audited, SoftDelete, TenantScoped, Timestamped, Versioned
from pgstack.orm.types import is_secret, python_type_of
from pgstack.repository import fast
from pgstack.repository.filters import Eq, Filter, ResolvedField, Sort, text_to_bool

logger = logging.getLogger("pgstack.repository")

M = TypeVar("M")

# Repository reads return what the database holds, even for objects already in the session.
POPULATE = {"populate_existing": True}

# Columns the repository maintains itself; `update()` refuses to set them directly.
MANAGED = frozenset(
    {"created_at", "updated_at", "created_by", "updated_by", "version", "deleted_at", "tenant_id"}
)


#: The largest offset (and `list()` limit) a read takes: PostgreSQL's int4. Beyond it is no
#: real page, and the value would not even fit the statement's parameter.
MAX_OFFSET = 2**31 - 1


def whole_number(name: str, value: Any, *, low: int = 0, high: int = MAX_OFFSET) -> int:
    """`value` if it is an int from `low` to `high`, else InvalidQueryError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidQueryError(
            f"{name} must be a whole number from {low} to {high}, not {shown_id(value)}."
        )
    return value


def _text_to_datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    # Text from a URL has no zone more often than not; pgstack stores UTC, so read it as UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


_FROM_TEXT: dict[type, tuple[Callable[[str], Any], str]] = {
    bool: (text_to_bool, "true or false"),
    int: (int, "whole number"),
    float: (float, "number"),
    Decimal: (Decimal, "decimal number"),
    datetime: (_text_to_datetime, "ISO-8601 date and time"),
    date: (date.fromisoformat, "ISO-8601 date"),
    time: (time.fromisoformat, "ISO-8601 time"),
    uuid.UUID: (uuid.UUID, "UUID"),
}


def _coercer(name: str, python_type: type | None) -> Callable[[Any], Any]:
    """Read text input (query strings, cursors) as the column's Python type; pass others."""
    converter = _FROM_TEXT.get(python_type) if python_type is not None else None
    if converter is None:
        return _identity
    parse, kind = converter

    def coerce(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except (ValueError, InvalidOperation):
            raise InvalidQueryError(
                f"{name!r} takes a {kind}; {value[:40]!r} is not one."
            ) from None

    return coerce


def _identity(value: Any) -> Any:
    return value


# Which columns hold secrets, for filtering and sorting: a value a caller may compare with
# (`password_hash__like=$argon2id$...%`) is a value a caller can guess one character at a time.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "hash",
        "digest",
        "secret",
        "token",
        "salt",
        "pepper",
        "credential",
        "credentials",
        "apikey",
    }
)
_KEY_QUALIFIERS = frozenset(
    {"api", "private", "secret", "signing", "encryption", "access", "session", "master"}
)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def secret_name(name: str) -> bool:
    """Whether a column name reads as secret material (the rule `filterable` enforces).

    The name's last word (split at `_` and case changes) is password, passwd, hash, digest,
    secret, token, salt, pepper, credential(s) or apikey, or the name ends in `<q>_key` where
    q is api, private, secret, signing, encryption, access, session or master. So
    `password_hash`, `totp_secret`, `refresh_token` and `api_key` are secret names, while
    `password_changed_at`, `token_type` and `sort_key` are not.
    """
    words = [w.lower() for w in _WORD.findall(name)]
    if not words:
        return False
    if words[-1] in _SECRET_WORDS:
        return True
    return words[-1] == "key" and len(words) > 1 and words[-2] in _KEY_QUALIFIERS


def secret_column(key: str, column: Any) -> bool:
    """Whether a mapped column is secret: encrypted, `info={"secret": True}`, or named so."""
    return is_secret(column) or secret_name(key) or secret_name(str(getattr(column, "name", "")))


def check_query_fields(
    model: type[Any],
    filterable: Collection[str] | None,
    sortable: Collection[str] | None,
    allow_secret_fields: Collection[str],
    owner: str,
) -> None:
    """Refuse a repository whose `filterable` or `sortable` names a secret column.

    Only the columns named in `allow_secret_fields` may be listed although they look secret.
    Runs when the repository class is defined (its model set), without configuring mappers.
    """
    columns = sa_inspect(model).columns
    for what, names in (
        ("filterable", filterable),
        ("sortable", sortable),
        ("allow_secret_fields", allow_secret_fields),
    ):
        if isinstance(names, str):
            raise ConfigurationError(
                f"{owner}.{what} is the string {names!r}; give a tuple of field names, "
                f"e.g. ({names!r},)."
            )
    unknown = [n for n in allow_secret_fields if n not in columns]
    if unknown:
        raise ConfigurationError(
            f"{owner}.allow_secret_fields names {', '.join(map(repr, unknown))}, which "
            f"{model.__name__} does not have."
        )
    for what, names in (("filterable", filterable), ("sortable", sortable)):
        secret = [
            n
            for n in names or ()
            if n in columns and n not in allow_secret_fields and secret_column(n, columns[n])
        ]
        if secret:
            raise ConfigurationError(
                f"{owner}.{what} lists {', '.join(map(repr, secret))}, which hold(s) secrets "
                "(encrypted, marked secret, or named like a password, hash, token or key): "
                "callers could guess a value by filtering or sorting on it. Remove it; if it "
                f"is not a secret, name it in {owner}.allow_secret_fields as well."
            )


@dataclass(frozen=True, slots=True)
class ColumnFacts:
    """A mapped column as the repository uses it."""

    key: str
    name: str
    attribute: InstrumentedAttribute[Any]
    field: ResolvedField
    secret: bool
    queryable_by_default: bool


class ModelInfo:
    """Facts about a model the repository needs on every call, worked out once per model."""

    def __init__(self, model: type[Any]) -> None:
        mapper: Mapper[Any] = sa_inspect(model)
        table = mapper.local_table
        if not isinstance(table, Table):
            raise ConfigurationError(f"{model.__name__} is not mapped to a table.")
        if len(mapper.primary_key) != 1:
            raise ConfigurationError(
                f"{model.__name__} has a composite primary key; the repository needs a "
                "single-column one (UUIDPrimaryKey or BigIntPrimaryKey)."
            )
        self.model = model
        self.name = model.__name__
        self.mapper = mapper
        self.table = table
        self.columns: dict[str, ColumnFacts] = {}
        for prop in mapper.column_attrs:
            if len(prop.columns) != 1 or not hasattr(prop.columns[0], "table"):
                continue
            column = prop.columns[0]
            attribute = cast(InstrumentedAttribute[Any], getattr(model, prop.key))
            python_type = python_type_of(column.type)
            secret = is_secret(column)
            hidden = secret_column(prop.key, column)
            self.columns[prop.key] = ColumnFacts(
                key=prop.key,
                name=column.name,
                attribute=attribute,
                field=ResolvedField(
                    name=prop.key,
                    column=attribute,
                    nullable=bool(column.nullable),
                    is_text=python_type is str,
                    coerce=_coercer(prop.key, python_type),
                ),
                secret=secret,
                queryable_by_default=not hidden
                and not isinstance(column.type, JSON | ARRAY | LargeBinary),
            )
        pk_column = mapper.primary_key[0]
        self.pk_key = mapper.get_property_by_column(pk_column).key
        self.pk = self.columns[self.pk_key].attribute
        self.pk_name = pk_column.name
        self.soft_delete = issubclass(model, SoftDelete) and "deleted_at" in self.columns
        self.versioned = issubclass(model, Versioned) and "version" in self.columns
        self.tenant_scoped = issubclass(model, TenantScoped) and "tenant_id" in self.columns
        self.timestamped = issubclass(model, Timestamped) and "updated_at" in self.columns
        self.audited = issubclass(model, Audited) and "updated_by" in self.columns
        self.managed = frozenset(k for k in MANAGED if k in self.columns) | {self.pk_key}
        # For statements built once and reused with parameters (the hot paths).
        self.statements: dict[Any, Any] = {}

    def attribute(self, key: str) -> InstrumentedAttribute[Any]:
        """The mapped attribute `key` (a column pgstack itself relies on)."""
        return self.columns[key].attribute


_model_infos: dict[type, ModelInfo] = {}


def model_info(model: type[Any]) -> ModelInfo:
    """The cached ModelInfo of a model."""
    info = _model_infos.get(model)
    if info is None:
        info = _model_infos[model] = ModelInfo(model)
    return info


class QueryFields:
    """The fields a repository lets callers filter and sort on, by name."""

    def __init__(
        self,
        info: ModelInfo,
        filterable: Collection[str] | None,
        sortable: Collection[str] | None,
    ) -> None:
        self.info = info
        self.filterable = self._allowed(filterable, "filterable")
        self.sortable = self._allowed(sortable, "sortable")
        #: What a read works out from its sort alone (checked against `sortable`), kept per
        #: sort as the caller gave it: `pgstack.repository.pagination`'s shapes.
        self.sorts: dict[Any, Any] = {}

    def _allowed(self, names: Collection[str] | None, what: str) -> dict[str, ResolvedField]:
        columns = self.info.columns
        if names is None:
            return {k: c.field for k, c in columns.items() if c.queryable_by_default}
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise ConfigurationError(
                f"{what} names {', '.join(map(repr, unknown))}, which {self.info.name} does not "
                f"have; its columns are: {', '.join(columns)}."
            )
        return {n: columns[n].field for n in names}

    def resolve(self, name: str) -> ResolvedField:
        """The field a filter may use, or InvalidQueryError naming the allowed ones."""
        found = self.filterable.get(name) if isinstance(name, str) else None
        if found is None:
            raise InvalidQueryError(
                f"Cannot filter {self.info.name} by {_shown(name)}: allowed fields are "
                f"{', '.join(self.filterable)}."
            )
        return found

    def sort_field(self, name: str) -> ResolvedField:
        """The field a sort may use, or InvalidQueryError naming the allowed ones."""
        found = self.sortable.get(name) if isinstance(name, str) else None
        if found is None:
            raise InvalidQueryError(
                f"Cannot sort {self.info.name} by {_shown(name)}: allowed fields are "
                f"{', '.join(self.sortable)}."
            )
        return found


def _constraint_name(exc: BaseException) -> str | None:
    """The constraint an integrity error names, through SQLAlchemy's and asyncpg's wrappers."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        name = getattr(seen, "constraint_name", None)
        if isinstance(name, str):
            return name
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def shown_id(value: Any) -> str:
    """A key for a message: UUIDs and numbers plainly, anything else quoted and shortened."""
    text = str(value) if isinstance(value, uuid.UUID | int) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


_fields_cache: dict[tuple[type, type], QueryFields] = {}


def sort_term(column: Any, descending: bool) -> Any:
    """ORDER BY term: ascending with NULLs last, or descending with NULLs first."""
    return column.desc().nulls_first() if descending else column.asc().nulls_last()


class RepositoryCore(Generic[M]):
    """The state and helpers every repository verb uses."""

    model: type[M]
    #: Fields callers may filter on (None: every column that is not secret, JSON or binary).
    #: A secret column (see `secret_name`) listed here is refused when the class is defined.
    filterable: ClassVar[Collection[str] | None] = None
    #: Fields callers may sort on (None: the same default as `filterable`).
    sortable: ClassVar[Collection[str] | None] = None
    #: Columns that look secret but are not, which `filterable` and `sortable` may then list.
    allow_secret_fields: ClassVar[Collection[str]] = ()
    #: Page size when a page request names none.
    default_page_size: ClassVar[int] = 50
    #: The largest page a caller may ask for.
    max_page_size: ClassVar[int] = 100

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = getattr(cls, "model", None)
        if isinstance(model, type):
            check_query_fields(
                model, cls.filterable, cls.sortable, cls.allow_secret_fields, cls.__name__
            )

    def __init__(self, session: AsyncSession, model: type[M] | None = None) -> None:
        if model is None:
            model = getattr(type(self), "model", None)
            if model is None:
                raise ConfigurationError(
                    f"{type(self).__name__} names no model: construct it as "
                    f"Repository(session, Model), or set `model = Model` on the subclass."
                )
        self.session = session
        self.model = model
        fields = _fields_cache.get((type(self), model))
        if fields is None:
            cls = type(self)
            check_query_fields(
                model, cls.filterable, cls.sortable, cls.allow_secret_fields, cls.__name__
            )
            fields = QueryFields(model_info(model), self.filterable, self.sortable)
            _fields_cache[(cls, model)] = fields
        self._info = fields.info
        self._fields = fields

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._info.name})"

    # -- conditions --------------------------------------------------------------------------

    def _scope(
        self, include_deleted: bool = False, *, shaped: bool = False
    ) -> list[ColumnElement[bool]]:
        """Soft-delete and tenant conditions every statement on this model carries.

        `shaped`: for a statement built once (`_shaped`), the tenant is the `pgstack_tenant`
        parameter instead of the current tenant's value.
        """
        info = self._info
        conditions: list[ColumnElement[bool]] = []
        if info.soft_delete and not include_deleted:
            conditions.append(info.attribute("deleted_at").is_(None))
        if self._scoped():
            tenant = bindparam("pgstack_tenant") if shaped else require_tenant(info.name)
            conditions.append(info.attribute("tenant_id") == tenant)
        return conditions

    def _where(
        self,
        filters: Iterable[Filter],
        equals: Mapping[str, Any],
        include_deleted: bool = False,
    ) -> list[ColumnElement[bool]]:
        conditions = self._scope(include_deleted)
        for item in filters:
            if not isinstance(item, Filter):
                raise InvalidQueryError(f"{item!r} is not a filter (Eq, In, And, ...).")
            conditions.append(item.clause(self._fields))
        for name, value in equals.items():
            conditions.append(Eq(name, value).clause(self._fields))
        return conditions

    def _order_by(self, sort: Iterable[Sort]) -> list[ColumnElement[Any]]:
        """ORDER BY terms; the primary key always comes last, so the order is total."""
        terms: list[ColumnElement[Any]] = []
        pk_named = False
        info = self._info
        for item in sort:
            # The primary key may always be named: it ends every order anyway.
            if item.field == info.pk_key:
                field = info.columns[info.pk_key].field
                pk_named = True
            else:
                field = self._fields.sort_field(item.field)
            terms.append(sort_term(field.column, item.descending))
        if not pk_named:
            terms.append(info.pk.asc())
        return terms

    def _writable(self, values: Mapping[str, Any], *, managed_ok: bool) -> dict[str, Any]:
        """Check the keys of `values` are columns (and not pgstack-managed, for updates)."""
        if not isinstance(values, Mapping):
            raise InvalidQueryError(
                f"Values for {self._info.name} must be a mapping of field names to values."
            )
        columns = self._info.columns
        for key in values:
            if key not in columns:
                raise InvalidQueryError(
                    f"{self._info.name} has no field {_shown(key)}; its fields are "
                    f"{', '.join(columns)}."
                )
            if not managed_ok and key in self._info.managed:
                raise InvalidQueryError(
                    f"{key!r} of {self._info.name} is maintained by pgstack and cannot be set "
                    "by an update (use delete/restore for deleted_at, expected_version for "
                    "version)."
                )
        return dict(values)

    # -- execution ---------------------------------------------------------------------------

    def _scoped(self) -> bool:
        """Whether statements on this model carry the tenant condition right now."""
        return self._info.tenant_scoped and not tenant_scope_lifted()

    def _shape_params(self, scoped: bool, **params: Any) -> dict[str, Any]:
        if scoped:
            params["pgstack_tenant"] = require_tenant(self._info.name)
        return params

    def _shaped(self, key: Any, build: Callable[[], Any]) -> Any:
        """The statement of `key`, built once per model and shape (`build()` the first time).

        Each call then only binds parameters: no statement building, no cache key.
        """
        return cached(self._info.statements.setdefault("shapes", {}), key, build)

    async def _read_objects(
        self,
        statement: Any,
        params: Mapping[str, Any] | None = None,
        *,
        key: Any = None,
        extra: int = 0,
        plain: bool = False,
    ) -> list[Any]:
        """Run a `select(Model, *extra columns)` read, on the fast path when it may.

        Returns objects, or `(object, *values)` rows with `extra`. `key` names a statement
        from `_shaped` (its plan is kept by key); without it the statement was built for
        this call (its plan is found by SQLAlchemy's cache key). With `plain`, dicts of
        field name to value stand for the objects: on the fast path no object is made.
        """
        session: Any = self.session
        if fast.session_is_fresh(session):
            # The sync session's engine (`session.bind` builds a map of binds per session).
            info, dialect = self._info, session.sync_session.bind.dialect
            planned = (
                fast.statement_plan(info, statement, dialect, extra)
                if key is None
                else fast.read_plan(info, key, statement, dialect, extra, params)
            )
            if planned is not None:
                done, rows = await fast.fetch_all(session, info, *planned, plain)
                if done:
                    return rows
        result = await self._read(statement, params)
        rows = list(result.all() if extra else result.scalars().all())
        if not plain:
            return rows
        # The session's path: its objects (refreshed, as any read in it leaves them), as dicts.
        keys = list(self._info.columns)
        if extra:
            return [({k: getattr(row[0], k) for k in keys}, *row[1:]) for row in rows]
        return [{k: getattr(obj, k) for k in keys} for obj in rows]

    async def _get_row(self, id: Any, include_deleted: bool = False) -> M | None:
        info = self._info
        scoped = self._scoped()
        key = ("get", include_deleted, scoped)

        def build() -> Any:
            conditions = self._scope(include_deleted, shaped=True)
            conditions.append(info.pk == bindparam("pgstack_pk"))
            return select(self.model).where(*conditions).execution_options(**POPULATE)

        statement = self._shaped(key, build)
        pk = info.columns[info.pk_key].field.coerce(id)
        params = self._shape_params(scoped, pgstack_pk=pk)
        identity_map = self.session.identity_map
        if len(identity_map) and info.mapper.identity_key_from_primary_key((pk,)) in identity_map:
            # Loaded already: the ordinary path refreshes that object in place.
            found: M | None = (await self._read(statement, params)).scalar_one_or_none()
            return found
        rows = await self._read_objects(statement, params, key=key)
        return rows[0] if rows else None

    async def _read(self, statement: Any, params: Mapping[str, Any] | None = None) -> Result[Any]:
        """Run a read; a dropped connection at the start of a transaction is retried once.

        A read that opens its transaction is idempotent as a whole, so it is safe to run again
        on a fresh connection. Inside a transaction that already did work, the work is gone
        with the connection: that surfaces as DatabaseUnavailableError, never a silent retry.
        """
        session = self.session
        retryable = not session.in_transaction() and not (
            session.new or session.deleted or session.dirty
        )
        try:
            result: Result[Any] = await session.execute(statement, params)
            return result
        except Exception as exc:
            error = translate_error(exc)
            if not (retryable and isinstance(error, DatabaseUnavailableError)):
                if error is exc:
                    raise
                raise error from exc
        logger.info("connection lost before a %s read; retrying once", self._info.name)
        await session.rollback()
        try:
            result = await session.execute(statement, params)
            return result
        except Exception as exc:
            error = translate_error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _write(self, statement: Any, params: Any = None) -> Result[Any]:
        """Run a write; integrity violations become ConflictError, driver errors pgstack's."""
        try:
            result: Result[Any] = await self.session.execute(statement, params)
            return result
        except Exception as exc:
            error = self._write_error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _flush(self) -> None:
        try:
            await self.session.flush()
        except Exception as exc:
            error = self._write_error(exc)
            if error is exc:
                raise
            raise error from exc

    def _write_error(self, exc: Exception) -> Exception:
        code = sqlstate_of(exc)
        if code in ("23505", "23503"):
            constraint = _constraint_name(exc)
            where = f" (constraint {constraint})" if constraint else ""
            if code == "23505":
                return ConflictError(
                    f"A {self._info.name} with the same unique value already exists{where}.",
                    constraint=constraint,
                )
            return ConflictError(
                f"The {self._info.name} refers to a row that does not exist, or is still "
                f"referred to by another row{where}.",
                constraint=constraint,
            )
        if code == "21000":
            return InvalidQueryError(
                f"The batch names the same {self._info.name} key twice; an upsert can change "
                "each row once per statement. Remove the duplicates."
            )
        translated = translate_error(exc)
        return translated if isinstance(translated, Exception) else exc
