"""Change tracking for JSON values, nested levels included, so in-place edits are saved.

SQLAlchemy's MutableDict sees `doc.data["a"] = 1` but not `doc.data["a"]["b"] = 1`: the
second change is silently lost at commit. Here every dict and list inside a JSON value is
tracked and reports a change to the top-level value, which marks the attribute dirty.
(sqlalchemy-json does the same but is unmaintained and untyped.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsIndex, cast

from sqlalchemy import event
from sqlalchemy.ext.mutable import Mutable
from sqlalchemy.orm import InstanceState, QueryableAttribute


class TrackedJSON(Mutable):
    """Base of tracked JSON containers: a change anywhere marks the owning attribute dirty."""

    _pgstack_owner: TrackedJSON | None = None

    @classmethod
    def coerce(cls, key: str, value: Any) -> Any:
        """Wrap plain dicts and lists (recursively) so their changes are seen."""
        if value is None or isinstance(value, TrackedJSON):
            return value
        if isinstance(value, dict | list):
            return _track(value, None)
        # Scalars (a JSON string or number at the top level) cannot change in place.
        return value

    def changed(self) -> None:
        """Report a change to the top-level value, which flags the attribute as modified."""
        owner = self._pgstack_owner
        if owner is not None:
            owner.changed()
        else:
            super().changed()

    def _adopt(self, value: Any) -> Any:
        return _track(value, self)

    @classmethod
    def _listen_on_attribute(
        cls, attribute: QueryableAttribute[Any], coerce: bool, parent_cls: Any
    ) -> None:
        # Mutable's own listeners assume every non-None value is a container; a JSON column
        # may also hold a bare string, number or boolean, which needs no tracking.
        key = attribute.key
        if parent_cls is not attribute.class_:
            return
        listen_keys = cls._get_listen_keys(attribute)

        def load(state: InstanceState[Any], *args: Any) -> None:
            value = state.dict.get(key)
            if value is not None:
                value = cls.coerce(key, value)
                state.dict[key] = value
                if isinstance(value, TrackedJSON):
                    value._parents[state] = key

        def load_attrs(state: InstanceState[Any], ctx: Any, attrs: Iterable[str]) -> None:
            if not attrs or listen_keys.intersection(attrs):
                load(state)

        def set_(target: InstanceState[Any], value: Any, oldvalue: Any, initiator: Any) -> Any:
            if value is oldvalue:
                return value
            if not isinstance(value, cls) or value._pgstack_owner is not None:
                # A nested container moved to the top level starts a new tree.
                value = cls.coerce(key, _plain(value))
            if isinstance(value, TrackedJSON):
                value._parents[target] = key
            if isinstance(oldvalue, TrackedJSON):
                oldvalue._parents.pop(target, None)
            return value

        event.listen(parent_cls, "_sa_event_merge_wo_load", load, raw=True, propagate=True)
        event.listen(parent_cls, "load", load, raw=True, propagate=True)
        event.listen(parent_cls, "refresh", load_attrs, raw=True, propagate=True)
        event.listen(parent_cls, "refresh_flush", load_attrs, raw=True, propagate=True)
        event.listen(attribute, "set", set_, raw=True, retval=True, propagate=True)


def _track(value: Any, owner: TrackedJSON | None) -> Any:
    if isinstance(value, dict):
        tracked_dict = TrackedDict()
        tracked_dict._pgstack_owner = owner
        dict.update(tracked_dict, ((k, _track(v, tracked_dict)) for k, v in value.items()))
        return tracked_dict
    if isinstance(value, list):
        tracked_list = TrackedList()
        tracked_list._pgstack_owner = owner
        list.extend(tracked_list, (_track(v, tracked_list) for v in value))
        return tracked_list
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class TrackedDict(TrackedJSON, dict[str, Any]):
    """A dict inside a JSON value whose changes, at any depth, are saved."""

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, self._adopt(value))
        self.changed()

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self.changed()

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            dict.__setitem__(self, key, self._adopt(value))
        self.changed()

    def pop(self, key: str, *default: Any) -> Any:
        result = dict.pop(self, key, *default)
        self.changed()
        return result

    def popitem(self) -> tuple[str, Any]:
        result = dict.popitem(self)
        self.changed()
        return result

    def clear(self) -> None:
        dict.clear(self)
        self.changed()

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # Copies and pickles are plain values, detached from any row.
        return (dict, (_plain(self),))


class TrackedList(TrackedJSON, list[Any]):
    """A list inside a JSON value whose changes, at any depth, are saved."""

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            list.__setitem__(self, index, [self._adopt(v) for v in value])
        else:
            list.__setitem__(self, index, self._adopt(value))
        self.changed()

    def __delitem__(self, index: Any) -> None:
        list.__delitem__(self, index)
        self.changed()

    def __iadd__(self, other: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(other)
        return self

    def __imul__(self, count: SupportsIndex) -> TrackedList:
        list.__imul__(self, count)
        self.changed()
        return self

    def append(self, value: Any) -> None:
        list.append(self, self._adopt(value))
        self.changed()

    def extend(self, values: Iterable[Any]) -> None:
        list.extend(self, (self._adopt(v) for v in values))
        self.changed()

    def insert(self, index: SupportsIndex, value: Any) -> None:
        list.insert(self, index, self._adopt(value))
        self.changed()

    def pop(self, index: SupportsIndex = -1) -> Any:
        result = list.pop(self, index)
        self.changed()
        return result

    def remove(self, value: Any) -> None:
        list.remove(self, value)
        self.changed()

    def clear(self) -> None:
        list.clear(self)
        self.changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        list.sort(self, *args, **kwargs)
        self.changed()

    def reverse(self) -> None:
        list.reverse(self)
        self.changed()

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (list, (_plain(self),))


def plain_json(value: Any) -> Any:
    """A tracked JSON value as plain dicts and lists (for serialising or comparing)."""
    return cast(Any, _plain(value))
