"""participants: when and by whom each was added; outbox copies of one mail to its Cc

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("participants") as table:
        table.add_column(sa.Column("added_at", sa.DateTime(), nullable=True))
        table.add_column(
            sa.Column("added_by", sa.String(length=320), nullable=False, server_default="")
        )
    # Before this revision only the Cc of a ticket's first mail became participants: the
    # requester's mail added them, when the ticket was made.
    op.execute(
        """
        UPDATE participants SET
          added_at = (SELECT t.created_at FROM tickets t WHERE t.id = participants.ticket_id),
          added_by = (SELECT t.requester FROM tickets t WHERE t.id = participants.ticket_id)
        """
    )
    with op.batch_alter_table("participants") as table:
        table.alter_column("added_at", existing_type=sa.DateTime(), nullable=False)
    with op.batch_alter_table("outbox") as table:
        table.add_column(sa.Column("copy_of", sa.String(length=255), nullable=True))
        table.create_index("ix_outbox_copy_of", ["copy_of"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox") as table:
        table.drop_index("ix_outbox_copy_of")
        table.drop_column("copy_of")
    with op.batch_alter_table("participants") as table:
        table.drop_column("added_by")
        table.drop_column("added_at")
