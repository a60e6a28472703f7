"""what the SMTP server announces; indexes for first contacts and recent events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "smtp_capabilities",
        sa.Column("server", sa.String(length=300), nullable=False),
        sa.Column("smtputf8", sa.Boolean(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("server"),
    )
    op.create_index("ix_messages_sender", "messages", ["sender"], unique=False)
    op.create_index("ix_events_kind_at", "events", ["kind", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_kind_at", table_name="events")
    op.drop_index("ix_messages_sender", table_name="messages")
    op.drop_table("smtp_capabilities")
