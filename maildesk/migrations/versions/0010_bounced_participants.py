"""participants.bounced_at: when mail to a participant was refused for good

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("participants", sa.Column("bounced_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("participants") as table:
        table.drop_column("bounced_at")
