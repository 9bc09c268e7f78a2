"""Review console: accounts, incidents and their notes, login attempts, sessions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Frozen copies of the tables in schoolgate.db as of this revision.
    op.create_table(
        "console_accounts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(), nullable=False, unique=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("disabled_at", _TIME),
    )
    op.create_table(
        "incidents",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("ref", sa.String()),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("assigned", sa.String()),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("updated_by", sa.String()),
    )
    op.create_index("ix_incidents_status", "incidents", ["status"])
    op.create_table(
        "incident_notes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.BigInteger(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("ts", _TIME, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status_from", sa.String()),
        sa.Column("status_to", sa.String()),
    )
    op.create_index("ix_incident_notes_incident_id", "incident_notes", ["incident_id"])
    op.create_table(
        "login_attempts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("ts", _TIME, nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("client_ip", sa.String(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
    )
    op.create_index("ix_login_attempts_username_ts", "login_attempts", ["username", "ts"])
    op.create_index("ix_login_attempts_client_ip_ts", "login_attempts", ["client_ip", "ts"])
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(), primary_key=True),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("last_seen", _TIME, nullable=False),
        sa.Column("ended_at", _TIME),
    )


def downgrade() -> None:
    for table in ("console_sessions", "login_attempts", "incident_notes", "incidents", "console_accounts"):
        op.drop_table(table)
