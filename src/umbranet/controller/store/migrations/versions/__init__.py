"""Alembic revisions, one file per schema change, named by revision number."""
