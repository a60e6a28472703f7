"""when a ticket's requester bounced permanently, and when an address bounced

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tickets", sa.Column("requester_bounced_at", sa.DateTime(), nullable=True))
    op.add_column("suppressions", sa.Column("bounced_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("suppressions") as table:
        table.drop_column("bounced_at")
    with op.batch_alter_table("tickets") as table:
        table.drop_column("requester_bounced_at")
