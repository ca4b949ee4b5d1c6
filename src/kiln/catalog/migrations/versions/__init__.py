"""One file per catalog revision, oldest first (alembic skips this file)."""
