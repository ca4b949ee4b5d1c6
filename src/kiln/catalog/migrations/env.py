"""Alembic's environment for the catalog.

kiln hands in the connection it holds (with the catalog's write lock taken: BEGIN
IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so the migrations run inside that
one transaction. To write a new revision after changing the models, let autogenerate
compare them with a scratch catalog at the current head, then review what it wrote and
add the revision to REVISIONS in kiln/catalog/revisions.py (tests/unit/test_migrations.py checks):

    .venv/bin/python -c 'from alembic import command; from alembic.config import Config
    c = Config(); c.set_main_option("script_location", "src/kiln/catalog/migrations")
    c.set_main_option("sqlalchemy.url", "sqlite:////tmp/scratch.db")
    command.upgrade(c, "head")
    command.revision(c, "what changed", autogenerate=True, rev_id="0003_what_changed")'

SQLite cannot alter a column in place: ``render_as_batch`` writes such changes as a
batch that copies the table.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from kiln.catalog import freshness as _freshness  # noqa: F401
from kiln.catalog import lifecycle as _lifecycle  # noqa: F401  (its tables join the metadata)
from kiln.catalog import machines as _machines  # noqa: F401
from kiln.catalog.models import Base


def run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=Base.metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as own:
        context.configure(connection=own, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
