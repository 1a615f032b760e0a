"""The campaigns routes: every write is stamped with the calling user (created_by/updated_by)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from campaigns.models import Campaign, Member
from pgstack import ConflictError, Repository, Session
from pgstack.orm import acting_as
from pgstack.web import DatabaseDep, SessionDep, TransactionDep
from pgstack.web.identity import CurrentUser

MAX_MEMBERS_PER_CALL = 10_000
T = TypeVar("T")
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class Campaigns(Repository[Campaign]):
    model = Campaign
    filterable = ("name", "status", "budget_cents", "created_by", "created_at", "launched_at")
    sortable = ("name", "budget_cents", "created_at", "launched_at")
    max_page_size = 100


class Members(Repository[Member]):
    model = Member
    filterable = ("campaign_id", "email", "name", "subscribed", "created_at")
    sortable = ("email", "created_at")
    max_page_size = 500


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    budget_cents: int = Field(0, ge=0, le=2**62)


class CampaignPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1, description="The version you read: 409 if stale.")
    name: Name | None = None
    budget_cents: int | None = Field(None, ge=0, le=2**62)


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    status: str
    budget_cents: int
    launched_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    name: Name | None = None
    subscribed: bool = True


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    email: str
    name: str | None
    subscribed: bool
    created_by: str | None
    updated_by: str | None


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


async def acting_user(user: CurrentUser) -> AsyncIterator[None]:
    """Every write of the request carries the caller's id in created_by / updated_by."""
    with acting_as(user.id):
        yield


router = APIRouter(prefix="/campaigns", tags=["campaigns"], dependencies=[Depends(acting_user)])


def _page(page: Any, out: type[BaseModel]) -> dict[str, Any]:
    items = [out.model_validate(item) for item in page.items]
    return {"items": items, "total": page.total, "limit": page.limit, "offset": page.offset}


@router.post("", status_code=201, response_model=CampaignOut)
async def create_campaign(body: CampaignIn, session: TransactionDep) -> Campaign:
    return await Campaigns(session).create(body.model_dump())


@router.get("", response_model=PageOut[CampaignOut])
async def list_campaigns(request: Request, session: SessionDep) -> dict[str, Any]:
    """Filter and sort with `status=running&name__ilike=%25spring%25&sort=-created_at`."""
    campaigns = Campaigns(session)
    query = campaigns.parse_query(request.query_params)
    page = await campaigns.page(
        *query.filters, sort=query.sort or ["-created_at"], limit=query.limit, offset=query.offset
    )
    return _page(page, CampaignOut)


@router.get("/{campaign_id}", response_model=CampaignOut)
async def get_campaign(campaign_id: uuid.UUID, session: SessionDep) -> Campaign:
    return await Campaigns(session).get(campaign_id)


@router.patch("/{campaign_id}", response_model=CampaignOut)
async def update_campaign(
    campaign_id: uuid.UUID, body: CampaignPatch, session: TransactionDep
) -> Campaign:
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    return await Campaigns(session).update(campaign_id, changes, expected_version=body.version)


@router.delete("/{campaign_id}", status_code=204)
async def delete_campaign(campaign_id: uuid.UUID, session: TransactionDep) -> Response:
    await Campaigns(session).delete(campaign_id)
    return Response(status_code=204)


@router.post("/{campaign_id}/members")
async def add_members(
    campaign_id: uuid.UUID,
    members: Annotated[list[MemberIn], Body(max_length=MAX_MEMBERS_PER_CALL)],
    session: TransactionDep,
) -> dict[str, int]:
    """Add or update members by e-mail (one statement for the whole list).

    An address given twice in one list (in any spelling the Email type folds together) is a
    422 from the repository.
    """
    await Campaigns(session).get(campaign_id)  # 404 for a missing or deleted campaign
    rows = [{**m.model_dump(), "campaign_id": campaign_id} for m in members]
    written = await Members(session).upsert_many(rows, on=["campaign_id", "email"], returning=False)
    return {"written": written}


@router.get("/{campaign_id}/members", response_model=PageOut[MemberOut])
async def list_members(
    campaign_id: uuid.UUID, request: Request, session: SessionDep
) -> dict[str, Any]:
    members = Members(session)
    query = members.parse_query(request.query_params)
    page = await members.page(
        *query.filters,
        campaign_id=campaign_id,
        sort=query.sort or ["email"],
        limit=query.limit,
        offset=query.offset,
    )
    return _page(page, MemberOut)


@router.post("/{campaign_id}/launch", response_model=CampaignOut)
async def launch_campaign(campaign_id: uuid.UUID, db: DatabaseDep) -> Campaign:
    """Draft to running, once, however many launch at the same moment (serializable, retried)."""

    async def launch(session: Session) -> Campaign:
        campaigns = Campaigns(session)
        campaign = await campaigns.get(campaign_id)
        if campaign.status != "draft":
            raise ConflictError(
                f"Campaign {campaign.name!r} is {campaign.status}: only a draft launches."
            )
        subscribed = await session.scalar(
            select(func.count())
            .select_from(Member)
            .where(Member.campaign_id == campaign_id, Member.subscribed)
        )
        if not subscribed:
            raise ConflictError(
                f"Campaign {campaign.name!r} has no subscribed member: add some first."
            )
        return await campaigns.update(campaign_id, {"status": "running", "launched_at": func.now()})

    return await db.run_in_transaction(launch, isolation="serializable")
