"""Seed data: `dev` (three campaigns, 20,000 members) and `test` (one small campaign).

Both are idempotent: a row whose unique key is there already is left alone.
`pgstack db seed dev` runs them with a progress bar.
"""

from __future__ import annotations

from sqlalchemy import select

from campaigns.models import Campaign, Member
from pgstack.migrations import SeedContext, seeder
from pgstack.orm import acting_as

DEV_CAMPAIGNS = [
    {"name": "Spring launch", "budget_cents": 500_000},
    {"name": "Summer sale", "budget_cents": 250_000},
    {"name": "Winter newsletter", "budget_cents": 0},
]
DEV_MEMBERS_PER_CAMPAIGN = 20_000 // len(DEV_CAMPAIGNS) + 1
TEST_MEMBERS = ["ada@example.com", "grace@example.com", "edsger@example.com"]


async def _campaign_ids(ctx: SeedContext, names: list[str]) -> list[object]:
    found = await ctx.session.scalars(
        select(Campaign.id).where(Campaign.name.in_(names)).order_by(Campaign.name)
    )
    return list(found)


@seeder("dev", order=0)
async def dev_campaigns(ctx: SeedContext) -> None:
    with acting_as("seed"):
        await ctx.insert(Campaign, DEV_CAMPAIGNS, conflict=["name"])
        ids = await _campaign_ids(ctx, [c["name"] for c in DEV_CAMPAIGNS])
        rows = (
            {"campaign_id": cid, "email": f"member{n}@example.com", "name": f"Member {n}"}
            for cid in ids
            for n in range(DEV_MEMBERS_PER_CAMPAIGN)
        )
        await ctx.insert(Member, list(rows), conflict=["campaign_id", "email"])


@seeder("test", order=0)
async def test_campaign(ctx: SeedContext) -> None:
    with acting_as("seed"):
        await ctx.insert(Campaign, [{"name": "Test campaign"}], conflict=["name"])
        [cid] = await _campaign_ids(ctx, ["Test campaign"])
        rows = [{"campaign_id": cid, "email": email} for email in TEST_MEMBERS]
        await ctx.insert(Member, rows, conflict=["campaign_id", "email"])
