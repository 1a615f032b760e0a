"""Engines and pool, sessions, transactions and retry, health, the embedded server."""

from pgstack.db.database import Database, Isolation
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.db.health import Check, HealthMonitor, HealthReport
from pgstack.db.session import Session

__all__ = [
    "Check",
    "Database",
    "EmbeddedPostgres",
    "HealthMonitor",
    "HealthReport",
    "Isolation",
    "Session",
]
