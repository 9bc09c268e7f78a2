"""The DSL's queue and the retention purge at ten million records.

- incidents carry their shown record's group and address (copied by the record writer as
  it makes or extends them), so the queue's group and device filters read no records;
- incidents (status, severity, last_seen) replaces (status), which it starts with: the
  queue of one status, or of the open ones, worst first, from the index alone;
- access_log (flag_severity, ts) goes: the flagged records by time are read through the
  partial index of 0007_volume, and every record paid for this one at write and purge;
- access_log (ref) keeps only the records that have a reference (blocks and warnings):
  lookups are by a reference, so never for a NULL, which most records are.

Revision ID: 0008_queries
Revises: 0008_partitions
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_queries"
down_revision: str | None = "0008_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HAS_REF = sa.text("ref IS NOT NULL")


def upgrade() -> None:
    op.add_column("incidents", sa.Column("group_name", sa.String()))
    op.add_column("incidents", sa.Column("client_ip", sa.String()))
    op.execute("UPDATE incidents SET group_name = (SELECT group_name FROM access_log WHERE access_log.id = record_id), "
               "client_ip = (SELECT client_ip FROM access_log WHERE access_log.id = record_id)")
    op.create_index("ix_incidents_status_severity_last_seen", "incidents", ["status", "severity", "last_seen"])
    op.drop_index("ix_incidents_status", table_name="incidents")
    op.drop_index("ix_access_log_flag_severity_ts", table_name="access_log")
    op.drop_index("ix_access_log_ref", table_name="access_log")
    op.create_index("ix_access_log_ref", "access_log", ["ref"], sqlite_where=_HAS_REF, postgresql_where=_HAS_REF)


def downgrade() -> None:
    op.drop_index("ix_access_log_ref", table_name="access_log")
    op.create_index("ix_access_log_ref", "access_log", ["ref"])
    op.create_index("ix_access_log_flag_severity_ts", "access_log", ["flag_severity", "ts"])
    op.create_index("ix_incidents_status", "incidents", ["status"])
    op.drop_index("ix_incidents_status_severity_last_seen", table_name="incidents")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("client_ip")
        batch.drop_column("group_name")
