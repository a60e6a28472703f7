"""Alembic environment: migrations run on the engine maildesk hands over."""

from alembic import context
from sqlalchemy import text

from maildesk.models import Base

# PostgreSQL: two daemons starting at once on a new database (two hosts, say) would both
# create the tables, and one would fail; the second waits here for the first to commit, then
# finds the schema current and does nothing. Any constant: it names this lock alone.
UPGRADE_LOCK = 0x6D61696C6465736B  # "maildesk"

config = context.config
engine = config.attributes.get("engine")

if engine is None:  # pragma: no cover - only when alembic is run by hand
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
