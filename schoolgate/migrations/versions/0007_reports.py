"""Per-day summaries of the access log for the period report (counts, no identities).

The report folds each complete UTC day into these once and reads them instead of
scanning every record of the period; a day whose record count changed since (a late
journal replay, a purge) is folded again.

Revision ID: 0007_reports
Revises: 0007_queue
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_reports"
down_revision: str | None = "0007_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "report_days",
        sa.Column("day", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("folded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "report_day_totals",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("flag_severity", sa.Integer()),
        sa.Column("flag", sa.String()),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_report_day_totals_day", "report_day_totals", ["day"])
    op.create_table(
        "report_day_sites",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_report_day_sites_day", "report_day_sites", ["day"])


def downgrade() -> None:
    op.drop_table("report_day_sites")
    op.drop_table("report_day_totals")
    op.drop_table("report_days")
