"""outbox.files, outbox.files_bytes: files of the store put in a mail when it is claimed

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("files", sa.Text(), nullable=True))
    op.add_column("outbox", sa.Column("files_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as table:
        table.drop_column("files_bytes")
        table.drop_column("files")
