"""pgstack: the async PostgreSQL data layer for Python services."""

from importlib.metadata import version as _version

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
    TransactionRetryError,
)
from pgstack.repository import CursorPage, Page, QuerySpec, Repository, Sort, parse_query

__version__ = _version("pgstack")

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
    "TransactionRetryError",
    "__version__",
    "errors",
    "parse_query",
]
