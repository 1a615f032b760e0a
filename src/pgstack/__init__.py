"""pgstack: the async PostgreSQL data layer for Python services.

The names below are imported on first use, so `import pgstack.<module>` (the command line
above all) loads only what it needs.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgstack import errors
    from pgstack.config import Settings
    from pgstack.db import Database, EmbeddedPostgres, HealthMonitor, HealthReport, Session
    from pgstack.errors import (
        AuthenticationError,
        ConcurrentSessionUseError,
        ConfigurationError,
        ConflictError,
        DatabaseUnavailableError,
        InvalidInputError,
        InvalidQueryError,
        NotFoundError,
        PermissionDeniedError,
        PgStackError,
        PoolExhaustedError,
        StatementTimeoutError,
        TransactionRetryError,
    )
    from pgstack.repository import CursorPage, Page, QuerySpec, Repository, Sort, parse_query

__version__ = _version("pgstack")

_HOMES = {
    "pgstack.config": ("Settings",),
    "pgstack.db": ("Database", "EmbeddedPostgres", "HealthMonitor", "HealthReport", "Session"),
    "pgstack.errors": (
        "AuthenticationError",
        "ConcurrentSessionUseError",
        "ConfigurationError",
        "ConflictError",
        "DatabaseUnavailableError",
        "InvalidInputError",
        "InvalidQueryError",
        "NotFoundError",
        "PermissionDeniedError",
        "PgStackError",
        "PoolExhaustedError",
        "StatementTimeoutError",
        "TransactionRetryError",
    ),
    "pgstack.repository": ("CursorPage", "Page", "QuerySpec", "Repository", "Sort", "parse_query"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        if name == "errors":
            return importlib.import_module("pgstack.errors")
        raise AttributeError(f"module 'pgstack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthenticationError",
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "ConflictError",
    "CursorPage",
    "Database",
    "DatabaseUnavailableError",
    "EmbeddedPostgres",
    "HealthMonitor",
    "HealthReport",
    "InvalidInputError",
    "InvalidQueryError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "PgStackError",
    "PoolExhaustedError",
    "QuerySpec",
    "Repository",
    "Session",
    "Settings",
    "Sort",
    "StatementTimeoutError",
    "TransactionRetryError",
    "__version__",
    "errors",
    "parse_query",
]
