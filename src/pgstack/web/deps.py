"""Request dependencies, each a few lines."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from pydantic import BeforeValidator

from pgstack.db.database import Database
from pgstack.db.session import Session
from pgstack.errors import DatabaseUnavailableError
from pgstack.repository import MAX_OFFSET


def get_database(request: Request) -> Database:
    """The app's Database (set by `create_app`'s lifespan)."""
    db: Database | None = getattr(request.app.state, "pgstack_db", None)
    if db is None:
        raise DatabaseUnavailableError(
            "This app has no pgstack Database: build it with pgstack.web.create_app()."
        )
    return db


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for this request; the handler commits what it wants kept."""
    async with get_database(request).session() as session:
        yield session


async def get_transaction(request: Request) -> AsyncIterator[Session]:
    """A session in a transaction committed when the handler returns, rolled back if it raises."""
    async with get_database(request).transaction() as session:
        yield session


DatabaseDep = Annotated[Database, Depends(get_database)]
# scope="function" closes the session when the handler returns, before a streaming
# response starts: the connection goes back to the pool instead of waiting on the client.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
TransactionDep = Annotated[Session, Depends(get_transaction, scope="function")]

#: A listing's `offset` query parameter, bounded in the schema as the repository bounds it.
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")]

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 date-time with its offset, such as 2026-01-31T09:30:00Z"
        )
    return value


#: A moment in a query parameter: RFC 3339 text with an offset, as the document's
#: `date-time` says (pydantic alone would also read a number as seconds since 1970).
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
