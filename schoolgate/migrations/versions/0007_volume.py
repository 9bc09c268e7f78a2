"""Indexes for the review side at a school's volume (10 M records and more).

A partial index of the flagged records by time: about 1 % of the log. The report's
risk counts read it directly, and with it SQLite's planner knows flagged rows are few,
so the incidents made for new flagged records (`flag_severity IS NOT NULL`) are found
through an index instead of a scan of the whole table (at 10 M records: 6 to 31 s
before, a fraction of a second after; bench/bench_queries.py). Creating it on 10 M
records takes about 20 s, once, while the gateway's writer journals.

Revision ID: 0007_volume
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_volume"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLAGGED = sa.text("flag_severity IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_access_log_flagged_ts", "access_log", ["ts"], sqlite_where=FLAGGED, postgresql_where=FLAGGED)


def downgrade() -> None:
    op.drop_index("ix_access_log_flagged_ts", "access_log")
