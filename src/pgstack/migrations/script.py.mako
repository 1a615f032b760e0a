"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
# Prefer text + a CHECK constraint to a PostgreSQL ENUM: dropping a table leaves its ENUM
# type behind; a downgrade must drop it too: sa.Enum(name="...").drop(op.get_bind()).
# On a busy table: `pgstack db check --safety` lints this revision before it runs;
# pgstack.migrations.safety offers lock_timeout(ms) and create_index_concurrently(...).

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
