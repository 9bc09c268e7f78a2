"""Indexes for the review side at a school's volume (10 M records and more).

A partial index of the flagged records by time: about 1 % of the log, so the DSL's
queue, the incidents made for new flagged records and the report's risk counts read
those rows alone instead of the whole table.

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
