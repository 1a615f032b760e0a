"""`Repository[Model]` with filters, sorting, offset and keyset pages, and bulk writes."""

from pgstack.repository.bulk import COPY_THRESHOLD
from pgstack.repository.core import MAX_OFFSET
from pgstack.repository.filters import (
    OPERATORS,
    After,
    And,
    Before,
    Between,
    Eq,
    Filter,
    Ge,
    Gt,
    ILike,
    In,
    IsNull,
    Le,
    Like,
    Lt,
    Ne,
    NotIn,
    Or,
    QuerySpec,
    Sort,
    parse_query,
)
from pgstack.repository.pagination import CursorPage, Page, configure_cursor_secret
from pgstack.repository.repository import Repository

__all__ = [
    "COPY_THRESHOLD",
    "MAX_OFFSET",
    "OPERATORS",
    "After",
    "And",
    "Before",
    "Between",
    "CursorPage",
    "Eq",
    "Filter",
    "Ge",
    "Gt",
    "ILike",
    "In",
    "IsNull",
    "Le",
    "Like",
    "Lt",
    "Ne",
    "NotIn",
    "Or",
    "Page",
    "QuerySpec",
    "Repository",
    "Sort",
    "configure_cursor_secret",
    "parse_query",
]
