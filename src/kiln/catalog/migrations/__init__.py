"""Alembic migrations of the catalog: env.py, the script template and versions/.

kiln runs them itself (kiln.catalog.migrate); ``alembic -c`` is not needed. To add a
revision after changing the models, see env.py.
"""
