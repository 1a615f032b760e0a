"""The fast path for `select(Model)` reads on a session that has not begun work yet.

A fresh session's first read would cost a pool checkout, a BEGIN, the SELECT and a ROLLBACK
on the way out, plus SQLAlchemy's ORM loading machinery per row. Here the statement,
compiled once per shape (SQLAlchemy's own cache key: the same filters with other values
reuse the plan), runs outside any transaction on the read lane of the session's Database
(`pgstack.db.lane`; a single statement needs no transaction: it is atomic and sees one
snapshot), and each row becomes an object the way the ORM's loader makes it: a new
instance, its attributes filled, its identity key set, in the session's identity map, with
the `load` event fired.

Anything out of the ordinary takes the ordinary path instead: a session inside a
transaction or with pending changes, a session not opened by `Database.session()` or a
Database whose read lane is off, a row whose object is already in the identity map (the
ordinary path refreshes it in place), SQL echo on, a model with relationships, inheritance
or deferred columns, a driver other than asyncpg, a value the driver cannot encode. An error
from the server is raised as SQLAlchemy raises it on the ordinary path (the read is not sent
twice); a connection found dead is dropped and the read run once more on another (see the
lane).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.base import instance_state

from pgstack.db.lane import (
    ReadLane,
    cached,
    compile_for_driver,
    driver_arguments,
    driver_parameters,
    result_processor,
)
from pgstack.db.session import Session
from pgstack.errors import PgStackError


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """One statement compiled for the driver: SQL, parameter order, how to read its columns."""

    sql: str
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    compiled: Any
    #: Result processors of columns after the model's (e.g. a page's total); with any, rows
    #: come back as `(object, *values)` tuples.
    extra: tuple[Callable[[Any], Any] | None, ...] = ()

    #: The model's attribute names in column order, and position, attribute and result
    #: processor of the columns that have one.
    keys: tuple[str, ...] = ()
    converted: tuple[tuple[int, str, Callable[[Any], Any]], ...] = ()
    #: Position and result processor of the primary key.
    pk: tuple[int, Callable[[Any], Any] | None] = (0, None)


def plain_mapper(mapper: Any) -> bool:
    """Whether a mapper maps one table's columns only: no relationships, inheritance, deferral."""
    return (
        not mapper.relationships
        and mapper.inherits is None
        and not mapper.polymorphic_map
        and all(
            len(prop.columns) == 1 and not prop.deferred and prop.parent is mapper
            for prop in mapper.column_attrs
        )
    )


def read_plan(
    info: Any, key: Any, statement: Any, dialect: Dialect, extra: int, params: Any
) -> tuple[ReadPlan, Any] | None:
    """The plan of a statement built once per `key` (cached on the model's info) and `params`.

    None if it is not eligible. `extra`: columns after the model's, as for `statement_plan`.
    """
    plans = info.statements.setdefault(("fast", dialect.name), {})
    plan = cached(plans, key, lambda: _compile(info, statement, dialect, extra=extra))
    return (plan, params) if plan else None


def _compile(
    info: Any, statement: Any, dialect: Dialect, extra: int = 0, cache_key: Any = None
) -> ReadPlan | bool:
    """The statement's plan, or False if it cannot take the fast path.

    With SQLAlchemy's `cache_key`, the plan serves every statement of the same shape: each
    call's values come from its own cache key (`statement_plan`).
    """
    if not plain_mapper(info.mapper):
        return False
    compiled = compile_for_driver(statement, dialect, cache_key)
    if compiled is None:
        return False
    entries = compiled._result_columns
    if extra:
        if len(entries) <= extra:
            return False
        entries, trailing = entries[:-extra], entries[-extra:]
        extras = tuple(result_processor(e[3], dialect) for e in trailing)
    else:
        extras = ()
    return _entity_plan(info, compiled, entries, dialect, extras)


def _entity_plan(
    info: Any, compiled: Any, entries: Any, dialect: Dialect, extras: tuple[Any, ...] = ()
) -> ReadPlan | bool:
    """The plan reading one model's object from `entries`, its slice of the result columns."""
    mapper = info.mapper
    columns = []
    for entry in entries:
        # The column itself, or (when its name repeats in a join) a label and then it.
        column = next((o for o in entry[2] if isinstance(o, Column)), None)
        try:
            prop = mapper.get_property_by_column(column)
        except Exception:
            return False
        processor = result_processor(entry[3], dialect)
        columns.append((prop.key, processor))
    if {key for key, _ in columns} != {prop.key for prop in mapper.column_attrs}:
        return False
    return ReadPlan(
        sql=compiled.string,
        params=driver_parameters(compiled),
        compiled=compiled,
        extra=extras,
        keys=tuple(key for key, _ in columns),
        pk=next((i, p) for i, (key, p) in enumerate(columns) if key == info.pk_key),
        converted=tuple(
            (index, key, processor)
            for index, (key, processor) in enumerate(columns)
            if processor is not None
        ),
    )


def statement_plan(
    info: Any, statement: Any, dialect: Dialect, extra: int = 0
) -> tuple[ReadPlan, Any] | None:
    """The plan of a per-call statement and this call's parameters, or None if not eligible.

    `extra`: how many columns follow the model's in the statement (returned beside objects).
    """
    cache_key = statement._generate_cache_key()
    if cache_key is None:
        return None
    plans = info.statements.setdefault(("fast-many", dialect.name), {})
    plan = cached(
        plans, cache_key.key, lambda: _compile(info, statement, dialect, extra, cache_key)
    )
    if not plan:
        return None
    params = plan.compiled.construct_params(
        extracted_parameters=cache_key.bindparams, escape_names=False
    )
    return plan, params


def entities_plan(
    infos: tuple[Any, ...], statement: Any, dialect: Dialect, values: Mapping[str, Any] | None
) -> tuple[tuple[ReadPlan, ...], Any] | None:
    """For `select(ModelA, ModelB, ...)`: a plan per model, and this call's parameters.

    None if not eligible. The statement's own values come from its cache key, and
    `bindparam()`s without one from `values`; the models' columns must be the statement's
    columns, one model after the other.
    """
    cache_key = statement._generate_cache_key()
    if cache_key is None:
        return None
    cache = infos[0].statements.setdefault(("fast-entities", dialect.name), {})

    def make() -> tuple[ReadPlan, ...] | bool:
        if not all(plain_mapper(info.mapper) for info in infos):
            return False
        compiled = compile_for_driver(statement, dialect, cache_key)
        if compiled is None:
            return False
        entries, start = compiled._result_columns, 0
        plans: list[ReadPlan] = []
        for info in infos:
            end = start + len(info.mapper.column_attrs)
            plan = _entity_plan(info, compiled, entries[start:end], dialect)
            if not isinstance(plan, ReadPlan):
                return False
            plans.append(plan)
            start = end
        return tuple(plans) if start == len(entries) else False

    plans = cached(cache, cache_key.key, make)
    if not plans:
        return None
    params = plans[0].compiled.construct_params(
        values, extracted_parameters=cache_key.bindparams, escape_names=False
    )
    return plans, params


async def fetch_one(
    lane: ReadLane,
    infos: tuple[Any, ...],
    plans: tuple[ReadPlan, ...],
    params: Any,
    *,
    write: bool = False,
) -> tuple[bool, tuple[Any, ...] | None]:
    """Run a statement matching at most one row: (done, one detached object per model, or None).

    For reads and writes whose objects leave with no session (as from a transaction that
    closed): no session is opened, the objects are made as `_objects` makes them, with the
    `load` event, and detached. done False (a read matching more than one row, the same
    model twice, a value the driver cannot encode): nothing was sent or written; use the
    ordinary path, which reports it in its own terms. With `write` (a single
    `INSERT/UPDATE ... RETURNING`, committed by itself) the statement is never sent twice: a
    lost connection is an error.
    """
    if lane.echo or len({info.mapper for info in infos}) != len(infos):
        return False, None
    first = plans[0]
    try:
        records = await lane.fetch(
            first.sql, driver_arguments(first.params, params), retry=not write
        )
    except (PgStackError, DBAPIError):
        raise
    except Exception:
        return False, None
    if len(records) > 1:
        if write:
            raise MultipleResultsFound(
                "The statement changed more than one row where one was expected."
            )
        return False, None
    if not records:
        return True, None
    record, start, row = records[0], 0, []
    for info, plan in zip(infos, plans, strict=True):
        end = start + len(plan.keys)
        row.append(_detached(info, plan, record[start:end]))
        start = end
    return True, tuple(row)


def _detached(info: Any, plan: ReadPlan, record: Any) -> Any:
    """One object from its columns of a record: loaded, unchanged, in no session."""
    mapper = info.mapper
    instance = mapper.class_manager.new_instance()
    state = instance_state(instance)
    values = state.dict
    values.update(zip(plan.keys, record, strict=True))
    for index, key, processor in plan.converted:
        value = record[index]
        if value is not None:
            values[key] = processor(value)
    state.key = (mapper._identity_class, (values[info.pk_key],), None)
    load = mapper.class_manager.dispatch.load
    if load:
        load(state, None)
    return instance


def session_is_fresh(session: AsyncSession) -> bool:
    """Whether the session has a read lane, no transaction begun and no pending changes."""
    return (
        isinstance(session, Session)
        and session._pgstack_lane is not None
        and not session.in_transaction()
        and not (session.new or session.dirty or session.deleted)
    )


async def fetch_all(
    session: Session, info: Any, plan: ReadPlan, params: Mapping[str, Any], plain: bool = False
) -> tuple[bool, list[Any]]:
    """Run `plan` outside a transaction: (done, objects); done False: use the ordinary path.

    With `plain`, dicts of the objects' attribute values instead (see `plain_rows`).
    """
    result: tuple[bool, list[Any]] = await session._pgstack_run_exclusive(
        _fetch_all, session, info, plan, params, plain
    )
    return result


async def _fetch_all(
    session: Session, info: Any, plan: ReadPlan, params: Mapping[str, Any], plain: bool
) -> tuple[bool, list[Any]]:
    lane = session._pgstack_lane
    if lane is None or lane.echo:
        return False, []
    try:
        records = await lane.fetch(plan.sql, driver_arguments(plan.params, params))
    except (PgStackError, DBAPIError):
        raise  # the server's answer (as SQLAlchemy reports it), or a lost or busy lane
    except Exception:
        # Refused by the driver before sending (a value it cannot encode): the ordinary
        # path reports that in its own terms.
        return False, []
    if plain:
        return True, plain_rows(plan, records)
    return _objects(session, info, plan, records)


def plain_rows(plan: ReadPlan, records: list[Any]) -> list[Any]:
    """Records as dicts of attribute name to value: the values an object would hold
    (the same result processors), with no object, state or identity map."""
    keys, converted = plan.keys, plan.converted
    rows = [dict(zip(keys, record, strict=False)) for record in records]  # the model's columns
    for _, key, processor in converted:
        for values in rows:
            value = values[key]
            if value is not None:
                values[key] = processor(value)
    return _with_extras(plan, rows, records)


def _objects(
    session: Session, info: Any, plan: ReadPlan, records: list[Any]
) -> tuple[bool, list[Any]]:
    """Records to persistent objects in `session`; (False, []) if one is loaded already."""
    mapper = info.mapper
    identity_class = mapper._identity_class
    sync_session = session.sync_session
    identity_map = sync_session.identity_map
    if len(identity_map):
        # An object this session holds already is refreshed in place by the ordinary path
        # (the read is idempotent; nothing has been added to the session yet). A fresh
        # session's map is empty: nothing to look for.
        at, process = plan.pk
        for record in records:
            pk = record[at]
            if process is not None and pk is not None:
                pk = process(pk)
            if (identity_class, (pk,), None) in identity_map:
                return False, []
    new_instance = mapper.class_manager.new_instance
    pk_key = info.pk_key
    keys, converted = plan.keys, plan.converted
    session_id = sync_session.hash_key
    add = identity_map._add_unpresent
    made = []
    states = []
    for record in records:
        # Persistent in this session, loaded and unchanged, as SQLAlchemy's loader leaves a
        # new object: attributes filled, identity key and session set, in the identity map.
        instance = new_instance()
        state = instance_state(instance)
        values = state.dict
        values.update(zip(keys, record, strict=False))  # stops at the model's columns
        for index, key, processor in converted:
            value = record[index]
            if value is not None:
                values[key] = processor(value)
        identity = (identity_class, (values[pk_key],), None)
        state.key = identity
        state.session_id = session_id
        add(state, identity)
        made.append(instance)
        states.append(state)
    load = mapper.class_manager.dispatch.load
    loaded_as_persistent = sync_session.dispatch.loaded_as_persistent
    if load or loaded_as_persistent:
        for state in states:
            if load:
                load(state, None)
            if loaded_as_persistent:
                loaded_as_persistent(sync_session, state)
    # The identity map holds objects weakly: these references keep them alive until returned.
    return True, _with_extras(plan, made, records)


def _with_extras(plan: ReadPlan, made: list[Any], records: list[Any]) -> list[Any]:
    """`made` as is, or `(item, *values)` rows with the plan's columns after the model's."""
    extras = plan.extra
    if not extras:
        return made
    width = len(plan.keys)
    if not any(extras):
        return [(item, *record[width:]) for item, record in zip(made, records, strict=True)]
    return [
        (
            item,
            *(
                value if processor is None or value is None else processor(value)
                for processor, value in zip(extras, record[width:], strict=True)
            ),
        )
        for item, record in zip(made, records, strict=True)
    ]
