"""Exceptions, access requests, managed list entries, the audit trail and the
change counter gateways poll.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Frozen copies of the tables in schoolgate.db as of this revision.
    op.create_table(
        "exceptions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("host", sa.String()),
        sa.Column("path", sa.String()),
        sa.Column("category", sa.String()),
        sa.Column("scope_kind", sa.String(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("starts_at", _TIME, nullable=False),
        sa.Column("ends_at", _TIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_by", sa.String(), nullable=False),
        sa.Column("granted_role", sa.String(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME),
        sa.Column("revoked_by", sa.String()),
        sa.Column("request_id", sa.BigInteger()),
    )
    op.create_index("ix_exceptions_ends_at", "exceptions", ["ends_at"])
    op.create_table(
        "list_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("entry", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("added_by", sa.String(), nullable=False),
        sa.Column("added_at", _TIME, nullable=False),
        sa.Column("removed_at", _TIME),
        sa.Column("removed_by", sa.String()),
    )
    op.create_table(
        "access_requests",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String()),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("client_ip", sa.String(), nullable=False),
        sa.Column("username", sa.String()),
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("decided_by", sa.String()),
        sa.Column("decided_role", sa.String()),
        sa.Column("decided_at", _TIME),
        sa.Column("note", sa.Text()),
        sa.Column("exception_id", sa.BigInteger()),
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status", "created_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("ts", _TIME, nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("object_kind", sa.String(), nullable=False),
        sa.Column("object_id", sa.BigInteger()),
        sa.Column("before", sa.Text()),
        sa.Column("after", sa.Text()),
    )
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])
    live_version = op.create_table(
        "live_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(live_version, [{"id": 1, "version": 0}])

    # The audit trail cannot be edited through the product, nor by a slip in SQL.
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
            )
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    for table in ("live_version", "audit_log", "access_requests", "list_entries", "exceptions"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
