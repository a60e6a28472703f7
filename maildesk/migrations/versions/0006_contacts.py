"""contacts: addresses that answered mail the desk sent them

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )
    # Who already answered the desk before this revision: a sender who wrote on a ticket
    # after the desk's mail to that very address on it had gone out. The earlier rule knew
    # anyone who had written at all; without this, every customer of a running desk would
    # count as new after the upgrade.
    op.execute(
        """
        INSERT INTO contacts (address, since)
        SELECT m.sender, MIN(m.created_at)
        FROM messages m
        JOIN outbox o ON o.ticket_id = m.ticket_id AND o.recipient = m.sender
        WHERE o.status = 'sent' AND o.sent_at IS NOT NULL AND o.sent_at <= m.created_at
          AND m.internal = false AND m.unverified = false AND m.sender <> ''
        GROUP BY m.sender
        """
    )


def downgrade() -> None:
    op.drop_table("contacts")
