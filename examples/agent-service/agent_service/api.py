"""The service's own routes: workspaces, their agents, the workspace's audit trail, pool stats.

Who may do what (an API key also needs the scopes in brackets):

- `POST /workspaces`: a user with a verified address [`workspaces:create`];
- `GET /agents`, `GET /agents/{id}`: a member of the workspace [`agents:read`,
  `tenant:viewer` or stronger];
- `POST`, `PATCH`, `DELETE /agents...`: a workspace admin in the group `agent-builders`
  [`agents:write`, `tenant:admin`, `agent-builders`];
- `GET /audit`: a workspace admin [`audit:read`, `tenant:admin`];
- `GET /health/pool`: anyone, like `/ready`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from agent_service.models import Agent
from pgstack import PermissionDeniedError, Repository
from pgstack.audit import AuditLog
from pgstack.web import DatabaseDep, SessionDep, TransactionDep
from pgstack.web.audit import EntryOut, EntryPageOut
from pgstack.web.identity import CurrentUser, require_groups, require_scopes
from pgstack.web.tenancy import TenancyDep, TenantAccessDep, TenantAdminDep, TenantOut

BUILDERS = "agent-builders"
AgentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
Line = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, Field(max_length=20_000, pattern=r"^[^\x00]*$")]
Tools = Annotated[
    list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")]], Field(max_length=50)
]


class Agents(Repository[Agent]):
    model = Agent
    filterable = ("name", "model", "enabled", "created_by", "created_at")
    sortable = ("name", "created_at", "updated_at")
    max_page_size = 100


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class WorkspaceIn(_Body):
    slug: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{2,39}$")]
    name: Line


class AgentIn(_Body):
    name: AgentName
    model: Line
    instructions: Text = ""
    tools: Tools = []
    enabled: bool = True


class AgentPatch(_Body):
    version: int = Field(ge=1, le=2**31 - 1, description="The version you read: 409 if stale.")
    model: Line | None = None
    instructions: Text | None = None
    tools: Tools | None = None
    enabled: bool | None = None


class AgentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    model: str
    instructions: str
    tools: list[str]
    enabled: bool
    version: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


class AgentPageOut(BaseModel):
    items: list[AgentOut]
    total: int | None
    limit: int
    offset: int


router = APIRouter()


@router.post(
    "/workspaces",
    status_code=201,
    tags=["workspaces"],
    dependencies=[Depends(require_scopes("workspaces:create"))],
)
async def create_workspace(body: WorkspaceIn, user: CurrentUser, tenancy: TenancyDep) -> TenantOut:
    """A new workspace (a pgstack tenant) on the free plan, with the caller as its owner."""
    if not user.is_verified:
        raise PermissionDeniedError(
            "Verify your e-mail address before creating a workspace (POST /auth/verify/request)."
        )
    tenant = await tenancy.tenants.create(body.slug, body.name, plan="free", owner_id=user.id)
    return TenantOut.model_validate(tenant)


agents = APIRouter(prefix="/agents", tags=["agents"])
read = [Depends(require_scopes("agents:read"))]
write = [Depends(require_scopes("agents:write")), Depends(require_groups(BUILDERS))]


@agents.get("", dependencies=read)
async def list_agents(
    access: TenantAccessDep, request: Request, session: SessionDep
) -> AgentPageOut:
    """The workspace's agents; filter and sort with `enabled=true&sort=-created_at`."""
    repo = Agents(session)
    query = repo.parse_query(request.query_params)
    page = await repo.page(
        *query.filters, sort=query.sort or ["name"], limit=query.limit, offset=query.offset
    )
    items = [AgentOut.model_validate(a) for a in page.items]
    return AgentPageOut(items=items, total=page.total, limit=page.limit, offset=page.offset)


@agents.get("/{agent_id}", dependencies=read)
async def get_agent(agent_id: uuid.UUID, access: TenantAccessDep, session: SessionDep) -> AgentOut:
    return AgentOut.model_validate(await Agents(session).get(agent_id))


@agents.post("", status_code=201, dependencies=write)
async def create_agent(body: AgentIn, access: TenantAdminDep, session: TransactionDep) -> AgentOut:
    """A new agent (409 if the workspace has one of that name); audited with its values."""
    return AgentOut.model_validate(await Agents(session).create(body.model_dump()))


@agents.patch("/{agent_id}", dependencies=write)
async def update_agent(
    agent_id: uuid.UUID, body: AgentPatch, access: TenantAdminDep, session: TransactionDep
) -> AgentOut:
    """Change an agent; a stale `version` is a 409 and changes nothing. Audited as a diff."""
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    agent = await Agents(session).update(agent_id, changes, expected_version=body.version)
    return AgentOut.model_validate(agent)


@agents.delete("/{agent_id}", status_code=204, dependencies=write)
async def delete_agent(
    agent_id: uuid.UUID, access: TenantAdminDep, session: TransactionDep
) -> Response:
    await Agents(session).hard_delete(agent_id)
    return Response(status_code=204)


router.include_router(agents)


@router.get("/audit", tags=["audit"], dependencies=[Depends(require_scopes("audit:read"))])
async def workspace_audit(
    access: TenantAdminDep,
    db: DatabaseDep,
    resource_type: Annotated[str | None, Query(max_length=100, pattern=r"^[\w.-]+$")] = None,
    resource_id: Annotated[str | None, Query(max_length=100, pattern=r"^[\w.:-]+$")] = None,
    action: Annotated[str | None, Query(max_length=100, pattern=r"^[\w.-]+$")] = None,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> EntryPageOut:
    """The workspace's audit trail, newest first: who changed what, from which request."""
    page = await AuditLog(db).entries(
        tenant_id=access.tenant.id,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        after=after,
        limit=limit,
    )
    return EntryPageOut(items=[EntryOut(**e) for e in page.items], next=page.next)


class PoolOut(BaseModel):
    pool: dict[str, int] = Field(
        description="size, checked_in, checked_out, overflow, max_overflow, total"
    )
    read_pool: dict[str, int] | None = Field(description="pgstack's read lane, the same numbers")


@router.get("/health/pool", tags=["health"])
async def pool_health(db: DatabaseDep) -> PoolOut:
    """The connection pools now, without a database round trip (`/ready` judges saturation)."""
    return PoolOut(pool=db.pool_stats(), read_pool=db.read_pool_stats())
