"""Reading verbs: get, get_or_none, get_by, exists, list, count."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, func, select

from pgstack.errors import InvalidQueryError, NotFoundError
from pgstack.repository.core import POPULATE, M, RepositoryCore, shown_id, whole_number
from pgstack.repository.filters import Filter, SortSpec, sorts


class ReadOps(RepositoryCore[M]):
    """Reads.

    Every read returns what the database holds now, even for rows this session has loaded
    before, and hides soft-deleted rows unless `include_deleted=True`.
    """

    async def get_or_none(self, id: Any, *, include_deleted: bool = False) -> M | None:
        """The row with primary key `id`, or None."""
        return await self._get_row(id, include_deleted)

    async def get(self, id: Any, *, include_deleted: bool = False) -> M:
        """The row with primary key `id`; NotFoundError (HTTP 404) if there is none."""
        found = await self.get_or_none(id, include_deleted=include_deleted)
        if found is None:
            raise NotFoundError(f"{self._info.name} {shown_id(id)} was not found.")
        return found

    async def get_by_or_none(self, *, include_deleted: bool = False, **equals: Any) -> M | None:
        """The one row whose fields equal `equals`, or None; more than one is an error."""
        if not equals:
            raise InvalidQueryError("get_by needs at least one field=value.")
        statement = (
            select(self.model)
            .where(*self._where((), equals, include_deleted))
            .limit(2)
            .execution_options(**POPULATE)
        )
        found = await self._read_objects(statement)
        if len(found) > 1:
            raise InvalidQueryError(
                f"get_by({', '.join(equals)}) matched more than one {self._info.name}; use "
                "list() or a unique field."
            )
        return found[0] if found else None

    async def get_by(self, *, include_deleted: bool = False, **equals: Any) -> M:
        """The one row whose fields equal `equals`; NotFoundError if there is none."""
        found = await self.get_by_or_none(include_deleted=include_deleted, **equals)
        if found is None:
            shown = ", ".join(f"{k}={shown_id(v)}" for k, v in equals.items())
            raise NotFoundError(f"No {self._info.name} with {shown} was found.")
        return found

    async def exists(self, *filters: Filter, include_deleted: bool = False, **equals: Any) -> bool:
        """Whether any row matches."""
        statement = select(exists().where(*self._where(filters, equals, include_deleted)))
        return bool((await self._read(statement)).scalar())

    async def list(
        self,
        *filters: Filter,
        sort: SortSpec | Iterable[SortSpec] | None = None,
        limit: int | None = None,
        offset: int = 0,
        include_deleted: bool = False,
        **equals: Any,
    ) -> builtins.list[M]:
        """Matching rows in `sort` order (primary key last, so the order is stable)."""
        statement = (
            select(self.model)
            .where(*self._where(filters, equals, include_deleted))
            .order_by(*self._order_by(sorts(sort)))
            .execution_options(**POPULATE)
        )
        if limit is not None:
            statement = statement.limit(whole_number("limit", limit))
        if offset:
            statement = statement.offset(whole_number("offset", offset))
        return await self._read_objects(statement)

    async def count(self, *filters: Filter, include_deleted: bool = False, **equals: Any) -> int:
        """How many rows match."""
        statement = (
            select(func.count())
            .select_from(self.model)
            .where(*self._where(filters, equals, include_deleted))
        )
        return int((await self._read(statement)).scalar_one())
