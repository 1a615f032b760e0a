"""pgstack: the async PostgreSQL data layer for Python services."""

from importlib.metadata import version as _version

from pgstack import errors
from pgstack.config import Settings
from pgstack.db import Database, EmbeddedPostgres, HealthMonitor, HealthReport, Session
from pgstack.errors import (
    ConcurrentSessionUseError,
    ConfigurationError,
    ConflictError,
    DatabaseUnavailableError,
    InvalidQueryError,
    NotFoundError,
    PgStackError,
    PoolExhaustedError,
    TransactionRetryError,
)

__version__ = _version("pgstack")

__all__ = [
    "ConcurrentSessionUseError",
    "ConfigurationError",
    "ConflictError",
    "Database",
    "DatabaseUnavailableError",
    "EmbeddedPostgres",
    "HealthMonitor",
    "HealthReport",
    "InvalidQueryError",
    "NotFoundError",
    "PgStackError",
    "PoolExhaustedError",
    "Session",
    "Settings",
    "TransactionRetryError",
    "__version__",
    "errors",
]
