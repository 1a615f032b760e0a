"""Writing verbs on one row: create, update, delete, hard_delete, restore, upsert.

Each is one statement (`INSERT/UPDATE/DELETE ... RETURNING`), so server-set values such as
`updated_at` come back with it. Nothing is committed here: the caller's transaction
(`async with db.transaction()`, or `await session.commit()`) decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Column, delete, func, insert, literal_column, null, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from pgstack.errors import ConflictError, InvalidQueryError, NotFoundError, TenantScopeError
from pgstack.orm.context import current_actor, require_tenant, tenant_scope_lifted
from pgstack.repository import fast
from pgstack.repository.core import M, RepositoryCore, shown_id

_RETURNING_OPTIONS = {"synchronize_session": False, "populate_existing": True}

# Events of the unit of work that `create`'s INSERT ... RETURNING does not go through: with a
# listener on any of them, `create` flushes as before so that the listener sees the row.
_MAPPER_FLUSH_EVENTS = ("before_insert", "after_insert")
_SESSION_FLUSH_EVENTS = (
    "before_flush",
    "after_flush",
    "after_flush_postexec",
    "transient_to_pending",
    "pending_to_persistent",
)


def insert_directly(session: Any, info: Any) -> bool:
    """Whether `create` may insert with one `INSERT ... RETURNING` instead of a flush.

    Only where nothing could tell the difference: the session holds no pending changes (a
    flush would write them first), the model is plain (no relationships, inheritance or
    deferred columns; every attribute is its column's key), and no listener waits for the
    unit of work's events (`_MAPPER_FLUSH_EVENTS`, `_SESSION_FLUSH_EVENTS`).
    """
    if session.new or session.dirty or session.deleted:
        return False
    plain = info.statements.get("insert-plain")
    if plain is None:
        plain = info.statements["insert-plain"] = fast.plain_mapper(info.mapper) and all(
            info.table.c.get(key) is not None
            and info.mapper.get_property_by_column(info.table.c[key]).key == key
            for key in info.columns
        )
    if not plain:
        return False
    mapper_events = info.mapper.dispatch
    if any(getattr(mapper_events, name) for name in _MAPPER_FLUSH_EVENTS):
        return False
    session_events = session.sync_session.dispatch
    return not any(getattr(session_events, name) for name in _SESSION_FLUSH_EVENTS)


class WriteOps(RepositoryCore[M]):
    """Single-row writes."""

    # -- helpers -----------------------------------------------------------------------------

    def _tenant_for_insert(self, given: Any) -> Any:
        """The tenant an inserted row must carry; a different one is refused."""
        if tenant_scope_lifted():
            if given is None:
                raise TenantScopeError(
                    f"Inside all_tenants() a new {self._info.name} needs an explicit tenant_id."
                )
            return given
        tenant = require_tenant(self._info.name)
        if given is not None and given != tenant:
            raise TenantScopeError(
                f"Cannot write a {self._info.name} for another tenant than the one in context."
            )
        return tenant

    def _stamp(self, row: dict[str, Any]) -> dict[str, Any]:
        if self._info.tenant_scoped:
            row["tenant_id"] = self._tenant_for_insert(row.get("tenant_id"))
        return row

    def _version_check(self, expected_version: int | None) -> list[ColumnElement[bool]] | None:
        """The condition a write with `expected_version` adds (None without one)."""
        if expected_version is None:
            return None
        if not self._info.versioned:
            raise InvalidQueryError(f"{self._info.name} is not Versioned; drop expected_version.")
        return [self._info.attribute("version") == expected_version]

    def _pk_value(self, id: Any) -> Any:
        return self._info.columns[self._info.pk_key].field.coerce(id)

    def _change_tracking(self) -> dict[Any, Any]:
        """Values every UPDATE sets besides the caller's: version, updated_at, updated_by."""
        info = self._info
        values: dict[Any, Any] = {}
        if info.versioned:
            version = info.attribute("version")
            values[version] = version + 1
        if info.timestamped:
            values[info.attribute("updated_at")] = func.now()
        if info.audited:
            actor = current_actor()
            values[info.attribute("updated_by")] = None if actor is None else str(actor)
        return values

    def _values(self, data: Mapping[str, Any]) -> dict[Any, Any]:
        info = self._info
        return {info.attribute(key): value for key, value in data.items()}

    async def _missing_or_conflict(self, id: Any, expected_version: int | None) -> Exception:
        """Why a single-row write matched nothing: a stale version, or no such row."""
        info = self._info
        if expected_version is not None:
            probe = select(info.attribute("version")).where(
                info.pk == self._pk_value(id), *self._scope()
            )
            current = (await self._read(probe)).scalar_one_or_none()
            if current is not None:
                return ConflictError(
                    f"{info.name} {shown_id(id)} is at version {current}, not {expected_version}: "
                    "someone changed it since you read it. Read it again and re-apply the change."
                )
        return NotFoundError(f"{info.name} {shown_id(id)} was not found.")

    # -- verbs -------------------------------------------------------------------------------

    async def create(self, values: M | Mapping[str, Any] | None = None, /, **fields: Any) -> M:
        """Insert one row from a model instance or field values; returns it with server values.

        A duplicate unique value is a ConflictError (HTTP 409).
        """
        if isinstance(values, self.model):
            if fields:
                raise InvalidQueryError("Pass either a model instance or field values, not both.")
            instance = values
            if self._info.tenant_scoped:
                given = instance.__dict__.get("tenant_id")
                setattr(instance, "tenant_id", self._tenant_for_insert(given))  # noqa: B010
        else:
            given_values = cast(Mapping[str, Any], values or {})
            data = self._writable({**given_values, **fields}, managed_ok=True)
            instance = self.model(**self._stamp(data))
            if insert_directly(self.session, self._info):
                return await self._insert_returning(instance)
        self.session.add(instance)
        await self._flush()
        return instance

    async def _insert_returning(self, instance: M) -> M:
        """Insert a new object's row with one `INSERT ... RETURNING`, without a flush.

        The statement is built once per model; Python-side defaults (ids, `created_by`,
        `version`) are SQLAlchemy's, computed for the columns the object leaves unset, and
        server defaults come back with RETURNING. The object then holds every column, as
        after a flush, and joins the session as persistent and unchanged.
        """
        info = self._info
        table = info.table
        values = instance.__dict__
        table_columns = table.c
        # As a flush: None leaves the column to its default, unless the type stores None
        # as a value of its own (JSON's `null`).
        params = {
            key: value
            for key in info.columns
            if key in values
            and ((value := values[key]) is not None or table_columns[key].type.should_evaluate_none)
        }
        if any(
            isinstance(v, ClauseElement) or hasattr(v, "__clause_element__")
            for v in params.values()
        ):
            # A SQL expression as a value: the unit of work renders it into the statement.
            self.session.add(instance)
            await self._flush()
            return instance
        statement, keys = self._shaped(
            ("insert",),
            lambda: (
                insert(table).returning(*table.columns),
                tuple(info.mapper.get_property_by_column(c).key for c in table.columns),
            ),
        )
        row = (await self._write(statement, params)).one()
        # Every column's value as loaded: make_transient_to_detached commits the object's
        # whole state (as set_committed_value would, key by key), so it holds no changes.
        values.update(zip(keys, row, strict=True))
        make_transient_to_detached(instance)
        self.session.add(instance)
        return instance

    async def update(
        self,
        id: Any,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        expected_version: int | None = None,
        **fields: Any,
    ) -> M:
        """Change the given fields of one row (others are left as they are); returns the row.

        With `expected_version`, the row must still be at that version, else ConflictError.
        """
        info = self._info
        data = self._writable({**(values or {}), **fields}, managed_ok=False)
        version_check = self._version_check(expected_version)
        if not data:
            current = await self._get_current(id)
            if version_check is not None and cast(Any, current).version != expected_version:
                raise await self._missing_or_conflict(id, expected_version)
            return current
        statement = update(self.model).where(
            info.pk == self._pk_value(id), *self._scope(), *version_check or ()
        )
        statement = statement.values({**self._values(data), **self._change_tracking()})
        result = await self._write(
            statement.returning(self.model).execution_options(**_RETURNING_OPTIONS)
        )
        row: M | None = result.scalar_one_or_none()
        if row is None:
            raise await self._missing_or_conflict(id, expected_version)
        return row

    async def _get_current(self, id: Any) -> M:
        row = await self._get_row(id)
        if row is None:
            raise NotFoundError(f"{self._info.name} {shown_id(id)} was not found.")
        return row

    async def delete(self, id: Any, *, expected_version: int | None = None) -> None:
        """Delete one row: soft (sets `deleted_at`) where the model has SoftDelete, else hard."""
        info = self._info
        if not info.soft_delete:
            await self.hard_delete(id, expected_version=expected_version)
            return
        statement = update(self.model).where(
            info.pk == self._pk_value(id),
            *self._scope(),
            *self._version_check(expected_version) or (),
        )
        statement = statement.values(
            {info.attribute("deleted_at"): func.now(), **self._change_tracking()}
        )
        result = await self._write(
            statement.returning(self.model).execution_options(**_RETURNING_OPTIONS)
        )
        if result.scalar_one_or_none() is None:
            raise await self._missing_or_conflict(id, expected_version)

    async def hard_delete(self, id: Any, *, expected_version: int | None = None) -> None:
        """Remove one row for good (soft-deleted or not)."""
        info = self._info
        statement = delete(self.model).where(
            info.pk == self._pk_value(id),
            *self._scope(include_deleted=True),
            *self._version_check(expected_version) or (),
        )
        result = await self._write(
            statement.returning(info.pk).execution_options(synchronize_session="fetch")
        )
        if result.scalar_one_or_none() is None:
            raise await self._missing_or_conflict(id, expected_version)

    async def restore(self, id: Any) -> M:
        """Bring a soft-deleted row back; a row that is not deleted is returned as it is."""
        info = self._info
        if not info.soft_delete:
            raise InvalidQueryError(f"{info.name} has no SoftDelete: there is nothing to restore.")
        deleted_at = info.attribute("deleted_at")
        statement = (
            update(self.model)
            .where(
                info.pk == self._pk_value(id),
                deleted_at.is_not(None),
                *self._scope(include_deleted=True),
            )
            .values({deleted_at: None, **self._change_tracking()})
            .returning(self.model)
            .execution_options(**_RETURNING_OPTIONS)
        )
        row: M | None = (await self._write(statement)).scalar_one_or_none()
        if row is None:
            return await self._get_current(id)
        return row

    def _upsert_statement(
        self,
        keys: Collection[str],
        on: Sequence[str] | None,
        update_fields: Collection[str] | None,
        where: ColumnElement[bool] | None,
    ) -> Any:
        info = self._info
        table = info.table
        conflict = tuple(on) if on else (info.pk_key,)
        for name in (*conflict, *(update_fields or ())):
            if name not in info.columns:
                raise InvalidQueryError(
                    f"{info.name} has no field {name!r}; its fields are {', '.join(info.columns)}."
                )
        if update_fields is None:
            update_fields = [k for k in keys if k not in conflict and k not in info.managed]
        statement = pg_insert(self.model)
        excluded = statement.excluded
        column = {k: table.c[info.columns[k].name] for k in info.columns}
        set_: dict[Column[Any], Any] = {
            column[k]: excluded[info.columns[k].name] for k in update_fields
        }
        # ON CONFLICT DO UPDATE skips column onupdate hooks, so change tracking is explicit.
        # No bound parameters here: they would stop the driver from batching many rows into
        # one multi-row statement (upsert_many).
        if info.timestamped:
            set_[column["updated_at"]] = func.now()
        if info.audited:
            set_[column["updated_by"]] = excluded[info.columns["updated_by"].name]
        if info.versioned:
            set_[column["version"]] = column["version"] + literal_column("1")
        if info.soft_delete:
            set_[column["deleted_at"]] = null()
        if not set_:
            first = info.columns[conflict[0]].name
            set_[table.c[first]] = excluded[first]
        guard = None
        if info.tenant_scoped:
            # Never take over a row of another tenant that happens to share the unique key.
            guard = column["tenant_id"] == excluded[info.columns["tenant_id"].name]
        return statement.on_conflict_do_update(
            index_elements=[info.columns[k].name for k in conflict],
            index_where=where,
            set_=set_,
            where=guard,
        )

    async def upsert(
        self,
        values: Mapping[str, Any],
        *,
        on: Sequence[str] | None = None,
        update: Collection[str] | None = None,
        where: ColumnElement[bool] | None = None,
    ) -> M:
        """Insert the row, or update the existing one with the same `on` key, in one statement.

        `on` names the unique key (default: the primary key); `update` the fields to overwrite
        on conflict (default: every given field except the key and managed ones); `where` the
        predicate of a partial unique index. An upserted soft-deleted row comes back to life.
        """
        data = self._stamp(self._writable(values, managed_ok=True))
        statement = self._upsert_statement(data.keys(), on, update, where)
        result = await self._write(
            statement.values(data).returning(self.model).execution_options(populate_existing=True)
        )
        row: M | None = result.scalar_one_or_none()
        if row is None:
            raise ConflictError(
                f"A {self._info.name} with this key exists and cannot be changed from here."
            )
        return row
