"""Outcomes of incidents, time to first review, notes on pupils, the watch list, and pupils'
year groups and forms from the directory.

Revision ID: 0007_pupil
Revises: 0007_itconsole
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_pupil"
down_revision: str | None = "0007_itconsole"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Frozen copies of the tables in schoolgate.db as of this revision.
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("first_reviewed_at", _TIME))
        batch.add_column(sa.Column("first_reviewed_by", sa.String()))
    op.create_table(
        "incident_outcomes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("outcome_date", sa.Date(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("ts", _TIME, nullable=False),
    )
    op.create_index("ix_incident_outcomes_incident_id", "incident_outcomes", ["incident_id"])
    op.create_table(
        "pupil_notes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("ts", _TIME, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index("ix_pupil_notes_username", "pupil_notes", ["username"])
    op.create_table(
        "pupil_directory",
        sa.Column("username", sa.String(), primary_key=True),
        sa.Column("year_group", sa.String()),
        sa.Column("form", sa.String()),
        sa.Column("updated_at", _TIME, nullable=False),
    )
    op.create_table(
        "watch_list",
        sa.Column("username", sa.String(), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("added_by", sa.String(), nullable=False),
        sa.Column("added_at", _TIME, nullable=False),
    )


def downgrade() -> None:
    for table in ("watch_list", "pupil_directory", "pupil_notes", "incident_outcomes"):
        op.drop_table(table)
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("first_reviewed_by")
        batch.drop_column("first_reviewed_at")
