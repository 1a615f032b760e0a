"""FastAPI face of pgstack: app factory, lifespan, dependencies, health and metrics routes."""

from pgstack.web.app import create_app
from pgstack.web.deps import (
    DatabaseDep,
    Offset,
    SessionDep,
    TransactionDep,
    get_database,
    get_session,
)
from pgstack.web.problems import problem_response

__all__ = [
    "DatabaseDep",
    "Offset",
    "SessionDep",
    "TransactionDep",
    "create_app",
    "get_database",
    "get_session",
    "problem_response",
]
