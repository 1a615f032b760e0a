"""One-row statements of the identity hot paths, on the read lane where it can serve them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pgstack.db.database import Database
from pgstack.db.session import translated_errors
from pgstack.repository import fast
from pgstack.repository.core import model_info


async def read_one(
    db: Database, statement: Any, values: Mapping[str, Any], *models: type[Any]
) -> Any | None:
    """The one row of `select(*models)...` (one object per model), or None if none matches.

    The identity checks every request makes (a session token, an API key) read one row: on
    the read lane that is one round trip (no BEGIN READ ONLY and COMMIT around it), with the
    objects made as the ORM makes them. Where the lane cannot serve it (off, SQL echo on),
    the same statement runs in a read-only transaction; either way the answer is the same.
    """
    return await _one_row(db, statement, values, models, write=False)


async def write_one(
    db: Database, statement: Any, values: Mapping[str, Any], *models: type[Any]
) -> Any | None:
    """Run one `UPDATE/INSERT ... RETURNING Model` by itself: its row as objects, or None.

    A single statement is atomic: it needs no BEGIN and COMMIT around it. On the read lane
    it is one round trip and is committed when it returns (never sent twice); elsewhere it
    runs in a transaction of its own. Either way it is the same statement with the same
    effect, and the objects come back detached, as from a closed transaction.
    """
    return await _one_row(db, statement, values, models, write=True)


async def _one_row(
    db: Database,
    statement: Any,
    values: Mapping[str, Any],
    models: tuple[type[Any], ...],
    *,
    write: bool,
) -> Any | None:
    lane = db.read_lane
    if lane is not None:
        infos = tuple(model_info(model) for model in models)
        planned = fast.entities_plan(infos, statement, db.engine.sync_engine.dialect, values)
        if planned is not None:
            with translated_errors():
                done, row = await fast.fetch_one(lane, infos, *planned, write=write)
            if done:
                return row
    async with db.transaction(readonly=not write) as session:
        return (await session.execute(statement, values)).one_or_none()
