"""The routes. Everything under /workspaces/{tenant_id} runs for a verified member only.

`TenantAccessDep` checks the caller's membership of the workspace in the path (404 for
anyone else), counts the request against the workspace's plan, and runs the route inside
the workspace's tenant context; `require_tenant_role("admin")` guards admin routes.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from meetings_saas import service
from meetings_saas.models import AccountMapping, CrmConnection, Meeting
from pgstack.web import DatabaseDep, SessionDep, TransactionDep
from pgstack.web.identity import CurrentUser
from pgstack.web.ratelimit import rate_limit
from pgstack.web.tenancy import TenantAccess, TenantAccessDep, require_tenant_role

T = TypeVar("T")
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
LongText = Annotated[str, Field(min_length=1, max_length=20_000, pattern=r"^[^\x00\x7f]+$")]
Secret = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$")]
Admin = Annotated[TenantAccess, Depends(require_tenant_role("admin"))]
Member = Annotated[TenantAccess, Depends(require_tenant_role("member"))]

#: New meetings per workspace (all its members together); MEETINGS_RATE_LIMIT to change it.
MEETINGS_LIMIT = os.environ.get("MEETINGS_RATE_LIMIT", "60/minute; 2000/day")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstallIn(Body):
    team_id: Annotated[str, Field(pattern=r"^T[A-Z0-9]{2,20}$", description="Slack team id")]
    team_name: Text
    slack_user_id: Annotated[str, Field(pattern=r"^[UW][A-Z0-9]{2,20}$")]


class WorkspaceOut(BaseModel):
    id: uuid.UUID
    team_id: str
    name: str
    plan: str
    created: bool


class ConnectIn(Body):
    provider: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,30}$", examples=["hubspot"])]
    account: Text
    access_token: Secret
    refresh_token: Secret | None = None
    expires_in: int = Field(3600, ge=1, le=10 * 365 * 86400)


class ConnectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    provider: str
    account: str
    status: str
    is_default: bool
    last_sync_at: datetime | None
    last_error: str | None


class SyncIn(Body):
    error: LongText | None = Field(None, description="Why the sync failed; none if it worked.")


class MeetingIn(Body):
    external_id: Text
    title: Text
    max_attempts: int = Field(3, ge=1, le=20)


class MeetingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    external_id: str
    title: str
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    summary: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    created_by: str | None


class CompleteIn(Body):
    summary: LongText


class FailIn(Body):
    error: LongText


class MappingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    domain: str
    crm_account_id: str
    account_name: str | None
    confidence: float
    usage_count: int
    last_used_at: datetime | None


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


async def _listed(
    repository: Any, request: Request, default_sort: str, out: type[BaseModel]
) -> dict[str, Any]:
    """A page of rows, filtered and sorted from the query string on declared fields only."""
    query = repository.parse_query(request.query_params)
    page = await repository.page(
        *query.filters, sort=query.sort or [default_sort], limit=query.limit, offset=query.offset
    )
    items = [out.model_validate(item) for item in page.items]
    return {"items": items, "total": page.total, "limit": page.limit, "offset": page.offset}


installs = APIRouter(tags=["workspaces"])
workspace = APIRouter(prefix="/workspaces/{tenant_id}", tags=["workspace"])


@installs.post("/workspaces/install", response_model=WorkspaceOut)
async def install(
    body: InstallIn, user: CurrentUser, db: DatabaseDep, response: Response
) -> WorkspaceOut:
    """The Slack app was installed in a team: its workspace, the installer its owner."""
    found, created = await service.install_workspace(
        db, body.team_id, body.team_name, user, body.slack_user_id
    )
    response.status_code = 201 if created else 200
    return WorkspaceOut(
        id=found.id, team_id=found.external_id, name=found.name, plan=found.plan, created=created
    )


# -- CRM connections ------------------------------------------------------------------------


@workspace.post("/crm-connections", status_code=201, response_model=ConnectionOut)
async def connect(
    body: ConnectIn, access: Admin, db: DatabaseDep, session: TransactionDep
) -> CrmConnection:
    """Connect a CRM account (after its OAuth flow): tokens into the vault, never answered."""
    return await service.connect_crm(
        db,
        session,
        body.provider,
        body.account,
        body.access_token,
        body.refresh_token,
        body.expires_in,
    )


@workspace.get("/crm-connections", response_model=PageOut[ConnectionOut])
async def list_connections(
    request: Request, access: TenantAccessDep, session: SessionDep
) -> dict[str, Any]:
    return await _listed(service.CrmConnections(session), request, "provider", ConnectionOut)


@workspace.post("/crm-connections/{connection_id}/default", response_model=ConnectionOut)
async def make_default(
    connection_id: uuid.UUID, access: Admin, session: TransactionDep
) -> CrmConnection:
    return await service.set_default_connection(session, connection_id)


@workspace.post("/crm-connections/{connection_id}/sync", response_model=ConnectionOut)
async def sync_result(
    connection_id: uuid.UUID, body: SyncIn, access: Member, session: TransactionDep
) -> CrmConnection:
    """Record a sync's outcome (the sync job posts it): last sync time, status, error."""
    return await service.record_sync(session, connection_id, body.error)


@workspace.delete("/crm-connections/{connection_id}", response_model=ConnectionOut)
async def disconnect(
    connection_id: uuid.UUID, access: Admin, db: DatabaseDep, session: TransactionDep
) -> CrmConnection:
    """Delete the tokens; the connection stays, revoked."""
    return await service.disconnect_crm(db, session, connection_id)


# -- meetings -------------------------------------------------------------------------------


@workspace.post(
    "/meetings",
    status_code=201,
    response_model=MeetingOut,
    dependencies=[Depends(rate_limit(MEETINGS_LIMIT, resource="meetings", per="tenant"))],
)
async def create_meeting(body: MeetingIn, access: Member, session: TransactionDep) -> Meeting:
    """A meeting to process, pending. The same external id twice in a workspace is a 409."""
    return await service.Meetings(session).create(body.model_dump())


@workspace.get("/meetings", response_model=PageOut[MeetingOut])
async def list_meetings(
    request: Request, access: TenantAccessDep, session: SessionDep
) -> dict[str, Any]:
    """Filter and sort: `status=failed&sort=-created_at&limit=20`."""
    return await _listed(service.Meetings(session), request, "-created_at", MeetingOut)


@workspace.get("/meetings/{meeting_id}", response_model=MeetingOut)
async def get_meeting(
    meeting_id: uuid.UUID, access: TenantAccessDep, session: SessionDep
) -> Meeting:
    return await service.Meetings(session).get(meeting_id)


@workspace.post("/meetings/claim", response_model=MeetingOut | None)
async def claim_next(access: Member, session: TransactionDep) -> Meeting | None:
    """The oldest pending meeting, now processing for this caller; null when none is left."""
    return await service.claim_next(session)


@workspace.post("/meetings/{meeting_id}/claim", response_model=MeetingOut)
async def claim(meeting_id: uuid.UUID, access: Member, session: TransactionDep) -> Meeting:
    """pending -> processing; of concurrent claimers one wins, the others get 409."""
    return await service.claim(session, meeting_id)


@workspace.post("/meetings/{meeting_id}/complete", response_model=MeetingOut)
async def complete(
    meeting_id: uuid.UUID, body: CompleteIn, access: Member, session: TransactionDep
) -> Meeting:
    return await service.complete(session, meeting_id, body.summary)


@workspace.post("/meetings/{meeting_id}/fail", response_model=MeetingOut)
async def fail(
    meeting_id: uuid.UUID, body: FailIn, access: Member, session: TransactionDep
) -> Meeting:
    return await service.fail(session, meeting_id, body.error)


@workspace.post("/meetings/{meeting_id}/retry", response_model=MeetingOut)
async def retry(meeting_id: uuid.UUID, access: Member, session: TransactionDep) -> Meeting:
    """failed -> pending while attempts are left; 409 once they are used up."""
    return await service.retry(session, meeting_id)


# -- account mappings -----------------------------------------------------------------------


@workspace.get("/account-mappings", response_model=PageOut[MappingOut])
async def list_mappings(
    request: Request, access: TenantAccessDep, session: SessionDep
) -> dict[str, Any]:
    return await _listed(service.AccountMappings(session), request, "domain", MappingOut)


IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": service.MappingIn.model_json_schema()}
            }
        },
    }
}


@workspace.post("/account-mappings/import", openapi_extra=IMPORT_BODY)
async def import_mappings(
    request: Request, access: Admin, session: TransactionDep
) -> dict[str, int]:
    """Upload a JSON file of mappings: all or nothing; importing it again is harmless."""
    data = bytearray()
    async for chunk in request.stream():  # stop reading at the size limit, not after it
        data += chunk
        if len(data) > service.MAX_IMPORT_BYTES:
            break
    return {"written": await service.import_mappings(session, bytes(data))}


class ResolveIn(Body):
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^\x00-\x1f\x7f]+$")]


@workspace.post("/account-mappings/resolve", response_model=MappingOut)
async def resolve(body: ResolveIn, access: Member, session: TransactionDep) -> AccountMapping:
    """The CRM account for an attendee's e-mail address; counts the mapping's use."""
    return await service.resolve_account(session, body.email)
