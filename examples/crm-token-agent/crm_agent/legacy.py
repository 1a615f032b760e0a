"""The one-off import of the old agent's plaintext tokens into the vault."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update

from crm_agent.models import LegacyToken
from pgstack import Database, NotFoundError
from pgstack.tokens import TokenVault

PROVIDER = "crm"


@dataclass(frozen=True)
class ImportResult:
    imported: int
    kept: int  # the vault already had a token for the portal: it is newer, so it wins


async def import_legacy(db: Database, vault: TokenVault) -> ImportResult:
    """Move every plaintext token not yet imported into the vault, then blank it here.

    Safe to run again: imported rows are skipped. A portal the vault already knows keeps the
    vault's token (the legacy row may hold a refresh token the provider has since retired).
    """
    imported = kept = 0
    async with db.session() as session:
        rows = (
            await session.scalars(
                select(LegacyToken)
                .where(LegacyToken.imported_at.is_(None), LegacyToken.access_token.is_not(None))
                .order_by(LegacyToken.id)
            )
        ).all()
    for row in rows:
        try:
            await vault.get(PROVIDER, row.portal_id)
            kept += 1
        except NotFoundError:
            assert row.access_token is not None
            await vault.save(
                PROVIDER,
                row.portal_id,
                row.access_token,
                row.refresh_token,
                expires_at=row.expires_at,
            )
            imported += 1
        async with db.transaction() as session:
            await session.execute(
                update(LegacyToken)
                .where(LegacyToken.id == row.id)
                .values(access_token=None, refresh_token=None, imported_at=func.now())
            )
    return ImportResult(imported=imported, kept=kept)
