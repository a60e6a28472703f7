"""desk_state: desk-wide values every daemon shares (the desk's secret when none is given)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The secret a data directory kept is moved in by the daemon as it starts (it knows the
    # config, the migration does not): maildesk.shared_secret.
    op.create_table(
        "desk_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("set_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("desk_state")
