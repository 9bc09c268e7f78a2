"""Console IT tools and reminders: an index for searching the log by group, one for the
managed lists' history in the audit trail, and incidents remember
the reminders sent while they stayed new.

Revision ID: 0007_itconsole
Revises: 0007_requests
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_itconsole"
down_revision: str | None = "0007_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index("ix_access_log_group_name_ts", "access_log", ["group_name", "ts"])
    op.create_index("ix_audit_log_object_kind_ts", "audit_log", ["object_kind", "ts"])
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("reminded_at", _TIME))
        batch.add_column(sa.Column("reminders_sent", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("reminders_sent")
        batch.drop_column("reminded_at")
    op.drop_index("ix_audit_log_object_kind_ts", "audit_log")
    op.drop_index("ix_access_log_group_name_ts", "access_log")
