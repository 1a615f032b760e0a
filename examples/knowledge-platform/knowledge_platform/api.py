"""The routes: documents (optimistic locking, streamed import), search, and the query log."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import desc, func, select
from sqlalchemy.exc import DBAPIError

from knowledge_platform.models import Document
from knowledge_platform.site import SITE_TENANT_ID
from pgstack import Database, InvalidInputError, Repository
from pgstack.analytics import QueryAnalytics, QueryEntry
from pgstack.orm import acting_as, tenant_context
from pgstack.web import DatabaseDep, SessionDep, TransactionDep
from pgstack.web.identity import CurrentUser, require_roles

#: An import line longer than this is refused before it is parsed.
MAX_LINE_BYTES = 1_000_000
NDJSON = "application/x-ndjson"

Slug = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")]
Title = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Line breaks and tabs are welcome in a body; other control characters (NUL) are not.
Body = Annotated[str, Field(max_length=200_000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
Since = Annotated[datetime | None, Query(description="Start of the period (ISO 8601 with zone).")]
Until = Annotated[datetime | None, Query(description="End of the period, excluded.")]


class Documents(Repository[Document]):
    model = Document
    filterable = ("slug", "title", "created_by", "updated_by", "created_at", "updated_at")
    sortable = ("slug", "title", "created_at", "updated_at")
    max_page_size = 100


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    slug: Slug
    title: Title
    body: Body = ""


class DocumentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    version: int = Field(ge=1, le=2**31 - 1, description="The version you read: 409 if stale.")
    title: Title | None = None
    body: Body | None = None


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    slug: str
    title: str
    body: str
    version: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    total: int
    limit: int
    offset: int


class Hit(BaseModel):
    id: uuid.UUID
    slug: str
    title: str
    rank: float


@contextmanager
def query_log(db: Database) -> Iterator[QueryAnalytics]:
    """pgstack's query log, in the site's tenant (the log belongs to one)."""
    with tenant_context(SITE_TENANT_ID):
        yield QueryAnalytics(db)


async def acting_user(user: CurrentUser) -> AsyncIterator[None]:
    """Every write of the request carries the caller's id in created_by / updated_by."""
    with acting_as(user.id):
        yield


router = APIRouter(tags=["documents"], dependencies=[Depends(acting_user)])
admin = APIRouter(
    prefix="/stats", tags=["query log"], dependencies=[Depends(require_roles("admin"))]
)


@router.post("/documents", status_code=201, response_model=DocumentOut)
async def create_document(body: DocumentIn, session: TransactionDep) -> Document:
    """A new document; a slug in use is a 409."""
    return await Documents(session).create(body.model_dump())


@router.get("/documents", response_model=DocumentPage)
async def list_documents(request: Request, session: SessionDep) -> dict[str, Any]:
    """Filter and sort with `title__ilike=%25guide%25&sort=-updated_at&limit=20`."""
    documents = Documents(session)
    query = documents.parse_query(request.query_params)
    page = await documents.page(
        *query.filters, sort=query.sort or ["slug"], limit=query.limit, offset=query.offset
    )
    items = [DocumentOut.model_validate(item) for item in page.items]
    return {"items": items, "total": page.total, "limit": page.limit, "offset": page.offset}


@router.get("/documents/{document_id}", response_model=DocumentOut)
async def get_document(document_id: uuid.UUID, session: SessionDep) -> Document:
    return await Documents(session).get(document_id)


@router.patch("/documents/{document_id}", response_model=DocumentOut)
async def edit_document(
    document_id: uuid.UUID, body: DocumentPatch, session: TransactionDep
) -> Document:
    """Change title or body; `version` must be the one you read, or nothing changes (409)."""
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    return await Documents(session).update(document_id, changes, expected_version=body.version)


def _parse_line(number: int, line: bytes) -> dict[str, Any] | None:
    """One import line as a row; a blank line is skipped; a bad one names its line and field."""
    if not line.strip():
        return None
    try:
        return DocumentIn.model_validate_json(line).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "the line"
        message = error["msg"]
        if error["type"] == "json_invalid":
            where, message = "the line", "is not one JSON object"
        elif error["type"] == "extra_forbidden":  # the unknown name is not echoed
            where, message = "fields", "only slug, title and body are accepted"
    raise InvalidInputError(
        f"Import line {number}: {where}: {message}. Nothing was imported; "
        "fix the line and send the whole file again."
    )


async def _ndjson_rows(request: Request) -> AsyncIterator[dict[str, Any]]:
    """The request body's lines as rows, read as they arrive (memory holds one batch)."""
    number, pending = 0, b""
    async for chunk in request.stream():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE_BYTES:
            raise InvalidInputError(
                f"Import line {number + len(lines) + 1} is longer than {MAX_LINE_BYTES} bytes: "
                "send one document per line. Nothing was imported."
            )
        for line in lines:
            number += 1
            row = _parse_line(number, line)
            if row is not None:
                yield row
    row = _parse_line(number + 1, pending)
    if row is not None:
        yield row


@router.post("/documents/import")
async def import_documents(request: Request, session: TransactionDep) -> dict[str, int]:
    """Create or replace documents by slug from NDJSON (one document per line), all or nothing.

    The body is read as it arrives and written in batches inside one transaction: a bad line
    anywhere is a 422 naming it, and nothing of the file is stored.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != NDJSON:
        raise InvalidInputError(
            f"Send the documents as {NDJSON}: one JSON object per line, with the header "
            f"content-type: {NDJSON}."
        )
    written = await Documents(session).upsert_many(
        _ndjson_rows(request), on=["slug"], update=["title", "body"], returning=False
    )
    return {"written": written}


@router.get("/search", response_model=list[Hit])
async def search(
    user: CurrentUser,
    db: DatabaseDep,
    session: SessionDep,
    q: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> list[dict[str, Any]]:
    """Documents matching `q` (web search syntax), best first; the search goes to the query log."""
    terms = func.websearch_to_tsquery("english", q)
    rank = func.ts_rank_cd(Document.search_vector, terms).label("rank")
    statement = (
        select(Document.id, Document.slug, Document.title, rank)
        .where(Document.search_vector.op("@@")(terms))
        .order_by(desc("rank"), Document.slug)
        .limit(limit)
    )
    started = time.perf_counter()
    try:
        rows = (await session.execute(statement)).mappings().all()
    except DBAPIError:
        await _log(db, user.id, q, "error", started, "the search failed")
        raise
    await _log(db, user.id, q, "success", started, None)
    return [dict(row) for row in rows]


async def _log(
    db: Database, user_id: uuid.UUID, text: str, status: str, started: float, error: str | None
) -> None:
    elapsed_ms = (time.perf_counter() - started) * 1000
    with query_log(db) as log:
        await log.log(user_id, text, "search", status, elapsed_ms, error=error)


@router.get("/me/queries")
async def my_queries(
    user: CurrentUser,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """The caller's searches, newest first; the next page starts at `before_id`."""
    with query_log(db) as log:
        entries = await log.history(user.id, limit=limit, before_id=before_id)
    return [_entry(e) for e in entries]


def _entry(entry: QueryEntry) -> dict[str, Any]:
    fields = ("id", "query_text", "status", "response_time_ms", "created_at")
    return {name: getattr(entry, name) for name in fields}


@admin.get("/popular")
async def popular(
    db: DatabaseDep, since: Since = None, until: Until = None, limit: int = Query(10, ge=1, le=100)
) -> list[dict[str, Any]]:
    """The most searched texts of the period (30 days unless named)."""
    with query_log(db) as log:
        found = await log.popular(since=since, until=until, limit=limit)
    return [_plain(p) for p in found]


@admin.get("/trends")
async def trends(
    db: DatabaseDep,
    since: Since = None,
    until: Until = None,
    zone: Annotated[str, Query(max_length=64)] = "UTC",
) -> list[dict[str, Any]]:
    """Searches, failures, mean time and users per day, as the clock of `zone` reads it."""
    with query_log(db) as log:
        found = await log.daily_trends(since=since, until=until, zone=zone)
    return [_plain(d) for d in found]


@admin.get("/latency")
async def latency(
    db: DatabaseDep, since: Since = None, until: Until = None
) -> list[dict[str, Any]]:
    """p50, p95 and p99 of the response time per query type."""
    with query_log(db) as log:
        found = await log.latency(since=since, until=until)
    return [_plain(line) for line in found]


@admin.get("/queries")
async def search_queries(
    db: DatabaseDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    since: Since = None,
    until: Until = None,
) -> list[dict[str, Any]]:
    """Logged searches matching `q`, best first."""
    with query_log(db) as log:
        hits = await log.search(q, since=since, until=until)
    return [{**_entry(h.entry), "rank": h.rank} for h in hits]


def _plain(figure: Any) -> dict[str, Any]:
    """A figure (a dataclass) as fields."""
    return dataclasses.asdict(figure)
