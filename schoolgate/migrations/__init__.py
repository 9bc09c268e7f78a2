"""Alembic environment for the access-record store (run through `schoolgate.db.upgrade`)."""
