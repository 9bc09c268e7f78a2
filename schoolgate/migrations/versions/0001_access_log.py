"""access_log: one row per access attempt.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Frozen copy of schoolgate.db.access_log as of this revision; later
    # changes to db.py need a new revision, not an edit here.
    op.create_table(
        "access_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("instance", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("client_ip", sa.String(), nullable=False),
        sa.Column("username", sa.String()),
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("scheme", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("port", sa.Integer()),
        sa.Column("url", sa.Text()),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer()),
        sa.Column("bytes_in", sa.BigInteger()),
        sa.Column("bytes_out", sa.BigInteger()),
        sa.Column("ref", sa.String()),
        sa.Column("decision_us", sa.Integer()),
    )
    op.create_index("ix_access_log_ts", "access_log", ["ts"])
    op.create_index("ix_access_log_username_ts", "access_log", ["username", "ts"])
    op.create_index("ix_access_log_client_ip_ts", "access_log", ["client_ip", "ts"])
    op.create_index("ix_access_log_ref", "access_log", ["ref"])
    op.create_index("ix_access_log_verdict_ts", "access_log", ["verdict", "ts"])
    op.create_index("ix_access_log_instance_seq", "access_log", ["instance", "seq"])


def downgrade() -> None:
    op.drop_table("access_log")
