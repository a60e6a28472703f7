"""merges, links and held replies: tickets.merged_into, ticket_links, messages.held

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tickets", sa.Column("merged_into", sa.Integer(), nullable=True))
    op.add_column(
        "messages", sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_table(
        "ticket_links",
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("other_id", sa.Integer(), nullable=False),
        sa.Column("linked_at", sa.DateTime(), nullable=False),
        sa.Column("linked_by", sa.String(length=320), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.ForeignKeyConstraint(["other_id"], ["tickets.id"]),
        sa.PrimaryKeyConstraint("ticket_id", "other_id"),
    )


def downgrade() -> None:
    op.drop_table("ticket_links")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("held")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("merged_into")
