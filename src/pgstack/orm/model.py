"""What every pgstack model can do: `to_dict()`, a repr without secrets, and safe lazy loads.

`ModelMixin` works on any declarative base; pgstack's `Base` already includes it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import Mapper, ORMExecuteState, Session
from sqlalchemy.util.concurrency import in_greenlet

from pgstack.errors import LazyLoadError
from pgstack.orm.types import is_secret

_REPR_VALUE_MAX = 60
# Per class: (attribute key, secret?, deferred?) for every mapped column, in declaration order.
_columns_cache: dict[type, tuple[tuple[str, bool, bool], ...]] = {}
_UNKNOWN = object()


def _columns(cls: type) -> tuple[tuple[str, bool, bool], ...]:
    columns = _columns_cache.get(cls)
    if columns is None:
        mapper: Mapper[Any] = sa_inspect(cls)
        columns = tuple(
            (prop.key, any(is_secret(c) for c in prop.columns), bool(prop.deferred))
            for prop in mapper.column_attrs
        )
        _columns_cache[cls] = columns
    return columns


def _known_values(obj: object) -> list[tuple[str, bool, Any]]:
    """(key, secret?, value) of every column whose value is known without a query.

    Columns never set on a row this session inserted read as None without a query; expired
    and deferred ones would need one, so they are left out.
    """
    state = sa_inspect(obj)
    loaded = state.dict
    expired = state.expired_attributes
    pending_loads = state.callables
    known = []
    for key, secret, deferred in _columns(type(obj)):
        value = loaded.get(key, _UNKNOWN)
        if value is _UNKNOWN:
            if deferred or key in expired or key in pending_loads:
                continue
            value = None
        known.append((key, secret, value))
    return known


class ModelMixin(AsyncAttrs):
    """`to_dict()`, a secret-free repr, `awaitable_attrs`, and lazy loads that explain themselves.

    Reading a relationship (or an expired column) that is not loaded, outside a running
    database call, raises LazyLoadError naming the fix instead of SQLAlchemy's MissingGreenlet.
    """

    __slots__ = ()

    def to_dict(
        self, *, include_secrets: bool = False, exclude: Collection[str] = ()
    ) -> dict[str, Any]:
        """The column values by attribute name; secret columns only when asked for.

        Never queries: expired or deferred attributes are left out.
        """
        return {
            key: value
            for key, secret, value in _known_values(self)
            if key not in exclude and (include_secrets or not secret)
        }

    def __repr__(self) -> str:
        parts = []
        for key, secret, value in _known_values(self):
            if secret:
                parts.append(f"{key}=***")
                continue
            shown = value.isoformat() if isinstance(value, datetime | date) else repr(value)
            if len(shown) > _REPR_VALUE_MAX:
                shown = shown[: _REPR_VALUE_MAX - 3] + "..."
            parts.append(f"{key}={shown}")
        name = type(self).__name__
        return f"<{name} {' '.join(parts)}>" if parts else f"<{name}>"


@event.listens_for(Session, "do_orm_execute")
def _refuse_implicit_io(state: ORMExecuteState) -> None:
    # Lazy and expired-attribute loads run as nested ORM executes; under an async engine,
    # outside a greenlet, they could only fail with MissingGreenlet. Say what to do instead.
    if not (state.is_relationship_load or state.is_column_load) or in_greenlet():
        return
    if state.is_relationship_load:
        parent = state.lazy_loaded_from
        cls: type | None = parent.class_ if parent is not None else None
        key = getattr(getattr(state.loader_strategy_path, "prop", None), "key", None)
    else:
        mapper = state.bind_mapper
        cls = mapper.class_ if mapper is not None else None
        options = getattr(state.statement, "_compile_options", None)
        only = getattr(options, "_only_load_props", None)
        key = ", ".join(sorted(only)) if only else None
    if cls is None or not issubclass(cls, ModelMixin):
        return
    try:
        is_async = state.session.get_bind(mapper=state.bind_mapper).dialect.is_async
    except Exception:
        return  # no engine to ask: let SQLAlchemy report what is wrong
    if is_async:
        raise LazyLoadError(_lazy_load_message(cls.__name__, key, state.is_relationship_load))


def _lazy_load_message(model: str, key: str | None, relationship: bool) -> str:
    name = f"{model}.{key}" if key else f"an attribute of {model}"
    attrs = f'["{key}"]' if key else "[...]"
    if relationship:
        how = (
            f"load it with the query — select({model}).options(selectinload({model}."
            f"{key or '...'})) — or explicitly: `await session.refresh(obj, {attrs})` or "
            f"`await obj.awaitable_attrs.{key or '...'}`"
        )
    else:
        how = (
            f"it was expired (or deferred): `await session.refresh(obj, {attrs})` reloads it; "
            "pgstack sessions keep values after commit (expire_on_commit=False)"
        )
    return (
        f"{name} is not loaded, and loading it now needs a database round trip that an async "
        f"session cannot make implicitly: {how}."
    )
