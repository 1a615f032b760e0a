"""pgstack rate limits: per-key counters in calendar windows (UNLOGGED)

Revision ID: pgstack_0006_rate_limits
Revises: pgstack_0005_tenant_rls
Create Date: 2026-12-01

UNLOGGED: the counters are written on every request and worth nothing after their window
ends, so they skip the WAL (no fsync per hit). A crash empties the table and standbys never
see it; both only restart the current windows. `ALTER TABLE pgstack_rate_limits SET LOGGED`
in an application migration keeps them across a crash (docs/ratelimits.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pgstack_0006_rate_limits"
down_revision: str | Sequence[str] | None = "pgstack_0005_tenant_rls"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pgstack_rate_limits",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("quota", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.CheckConstraint("seconds > 0", name=op.f("ck_pgstack_rate_limits_seconds_positive")),
        sa.CheckConstraint(
            "hits >= 0 AND quota > 0 AND refused >= 0",
            name=op.f("ck_pgstack_rate_limits_counts_valid"),
        ),
        sa.PrimaryKeyConstraint(
            "key", "seconds", "window_start", name=op.f("pk_pgstack_rate_limits")
        ),
        prefixes=["UNLOGGED"],
    )
    op.create_index("ix_pgstack_rate_limits_expires_at", "pgstack_rate_limits", ["expires_at"])


def downgrade() -> None:
    op.drop_table("pgstack_rate_limits")
