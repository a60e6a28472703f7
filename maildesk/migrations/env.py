"""Alembic environment: migrations run on the engine maildesk hands over."""

from alembic import context

from maildesk.models import Base

config = context.config
engine = config.attributes.get("engine")

if engine is None:  # pragma: no cover - only when alembic is run by hand
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
