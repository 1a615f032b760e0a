"""pgstack base: the schema-info table, and citext where the server offers it

Revision ID: pgstack_0001
Revises:
Create Date: 2026-11-25

The root of the `pgstack` branch: every built-in module's revisions, and an application's
first revision (through `depends_on`), come after it.

`citext` gives modules case-insensitive text (e-mail addresses). It is created only when the
server has it and this role may create it; otherwise the revision carries on without it and
says so in a NOTICE. The downgrade drops the extension only if this revision created it,
which `pgstack_meta` records, so a database prepared by `pgstack db init` keeps it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pgstack_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("pgstack",)
depends_on: str | Sequence[str] | None = None

CITEXT_KEY = "extension.citext"


def upgrade() -> None:
    op.create_table(
        "pgstack_meta",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_pgstack_meta")),
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citext')
               AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citext') THEN
                BEGIN
                    CREATE EXTENSION citext;
                    INSERT INTO pgstack_meta (key, value)
                    VALUES ('{CITEXT_KEY}', 'created by pgstack_0001');
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE NOTICE 'pgstack: citext not created (this role may not); '
                        'run pgstack db init with an admin URL to add it';
                END;
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pgstack_meta WHERE key = '{CITEXT_KEY}') THEN
                DROP EXTENSION IF EXISTS citext;
            END IF;
        END $$
        """
    )
    op.drop_table("pgstack_meta")
