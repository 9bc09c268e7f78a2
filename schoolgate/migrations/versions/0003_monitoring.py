"""Monitoring: search terms and safeguarding flags on access records.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("search_engine", sa.String()),
    ("search_term", sa.Text()),
    ("flag", sa.String()),
    ("flag_severity", sa.Integer()),
    ("flag_detail", sa.Text()),
)


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("access_log", sa.Column(name, type_))
    op.create_index("ix_access_log_flag_severity_ts", "access_log", ["flag_severity", "ts"])


def downgrade() -> None:
    op.drop_index("ix_access_log_flag_severity_ts", "access_log")
    with op.batch_alter_table("access_log") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
