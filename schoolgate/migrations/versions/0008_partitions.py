"""PostgreSQL: access_log partitioned by UTC day, so retention drops a day's partition
instead of deleting its rows one by one (schoolgate.partitioning). SQLite is unchanged.

The records move into a new partitioned table in this revision's transaction (minutes
for millions of rows; gateways starting meanwhile wait on the migration lock). A
partitioned table's primary key must hold the partition key: it is (id, ts) now. ids
still come from the one sequence, so each is still unique, and incidents keep pointing
at their record by id: a lookup by id alone reads every partition's (id, ts) index.

Revision ID: 0008_partitions
Revises: 0007_reports
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from alembic import op

from schoolgate.partitioning import create_day_partition, create_default_partition, prepare_partitions

revision: str = "0008_partitions"
down_revision: str | None = "0007_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of access_log's indexes as of this revision: (name, columns, partial index condition).
_INDEXES = (
    ("ix_access_log_ts", "ts", None),
    ("ix_access_log_username_ts", "username, ts", None),
    ("ix_access_log_client_ip_ts", "client_ip, ts", None),
    ("ix_access_log_ref", "ref", None),
    ("ix_access_log_verdict_ts", "verdict, ts", None),
    ("ix_access_log_instance_seq", "instance, seq", None),
    ("ix_access_log_flag_severity_ts", "flag_severity, ts", None),
    ("ix_access_log_flagged_ts", "ts", "flag_severity IS NOT NULL"),
    ("ix_access_log_group_name_ts", "group_name, ts", None),
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE access_log RENAME TO access_log_unpartitioned")
    op.execute("ALTER TABLE access_log_unpartitioned DROP CONSTRAINT access_log_pkey")
    for name, _, _ in _INDEXES:  # their names are free for the new table's; the copy reads the whole table anyway
        op.execute(f"DROP INDEX {name}")
    op.execute("CREATE TABLE access_log (LIKE access_log_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
    op.execute("ALTER SEQUENCE access_log_id_seq OWNED BY access_log.id")  # else it goes with the old table
    create_default_partition(bind)
    days = [day for (day,) in bind.exec_driver_sql(
        "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM access_log_unpartitioned")]
    for day in sorted(days):
        create_day_partition(bind, day)
    prepare_partitions(bind, datetime.now(UTC).date())
    op.execute("INSERT INTO access_log SELECT * FROM access_log_unpartitioned")
    op.execute("DROP TABLE access_log_unpartitioned")
    # Built after the copy, partition by partition: quicker than keeping them up to date row by row.
    op.execute("ALTER TABLE access_log ADD CONSTRAINT access_log_pkey PRIMARY KEY (id, ts)")
    for name, columns, where in _INDEXES:
        op.execute(f"CREATE INDEX {name} ON access_log ({columns})" + (f" WHERE {where}" if where else ""))
    op.execute("ANALYZE access_log")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE access_log_plain (LIKE access_log INCLUDING DEFAULTS)")
    op.execute("INSERT INTO access_log_plain SELECT * FROM access_log")
    op.execute("ALTER SEQUENCE access_log_id_seq OWNED BY access_log_plain.id")
    op.execute("DROP TABLE access_log")  # its partitions and indexes with it
    op.execute("ALTER TABLE access_log_plain RENAME TO access_log")
    op.execute("ALTER TABLE access_log ADD PRIMARY KEY (id)")
    for name, columns, where in _INDEXES:
        op.execute(f"CREATE INDEX {name} ON access_log ({columns})" + (f" WHERE {where}" if where else ""))
