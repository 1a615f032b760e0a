"""`PageOut`: one offset page of a listing route, as the repository's `Page` describes it."""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel, Field

from pgstack.repository import Page

ItemT = TypeVar("ItemT", bound=BaseModel)


class PageOut(BaseModel, Generic[ItemT]):
    """One page; `total` is the planner's estimate when `total_is_estimate` is true.

    Subclass it per item type (`class UserPageOut(PageOut[UserOut])`) so the OpenAPI
    document names the schema, and build it with `from_page`.
    """

    items: list[ItemT]
    total: int | None = Field(description="How many rows match in all.")
    limit: int
    offset: int
    total_is_estimate: bool = Field(
        description="Whether `total` is the planner's estimate rather than a count (big lists)."
    )
    has_more: bool = Field(description="Whether rows follow this page (always exact).")

    @classmethod
    def from_page(cls, page: Page[Any], item: type[ItemT]) -> Self:
        """This page model filled from `page`, each row validated as `item`."""
        return cls(
            items=[item.model_validate(row) for row in page.items],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
            total_is_estimate=page.total_is_estimate,
            has_more=page.has_more,
        )
