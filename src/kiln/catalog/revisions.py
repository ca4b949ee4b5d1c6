"""The catalog's schema revisions and row states, without importing SQLAlchemy.

REVISIONS lists catalog/migrations/versions oldest first (tests/unit/test_migrations.py
checks they match the scripts). Opening a catalog at HEAD costs one query of
alembic_version; anything else imports Alembic (kiln.catalog.migrate) and upgrades.
"""

REVISIONS = (
    "0001_first",
    "0002_sizes_64bit",
    "0003_lifecycle",
    "0004_freshness",
    "0005_rollouts",
    "0006_holdings",
)
FIRST, HEAD = REVISIONS[0], REVISIONS[-1]

OK = "ok"
PENDING = "pending"  # a bake between allocating its version and tagging it in the store
