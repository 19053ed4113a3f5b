"""Alembic migration scripts of the controller store (run through `store.db.migrate`)."""
