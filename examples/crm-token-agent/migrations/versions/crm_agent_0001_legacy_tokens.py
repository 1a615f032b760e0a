"""the old agent's plaintext tokens, kept until imported into the vault

Revision ID: crm_agent_0001
Revises:
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "crm_agent_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("crm_agent",)
# The vault's tables (oauth_tokens, token_refresh_audit) come with pgstack's revisions.
depends_on: str | Sequence[str] | None = ("pgstack_0003_tokens",)


def upgrade() -> None:
    op.create_table(
        "legacy_crm_tokens",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("portal_id", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legacy_crm_tokens")),
        sa.UniqueConstraint("portal_id", name=op.f("uq_legacy_crm_tokens_portal_id")),
    )


def downgrade() -> None:
    op.drop_table("legacy_crm_tokens")
