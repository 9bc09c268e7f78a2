"""Exceptions keep the scope as chosen ("class 9X", "room lab-2") beside its members or
address ranges; class_members holds the class lists a teacher opens sites for.

Revision ID: 0007_requests
Revises: 0007_volume
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_requests"
down_revision: str | None = "0007_volume"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("exceptions") as batch:
        batch.add_column(sa.Column("scope_label", sa.String()))
    # A frozen copy of schoolgate.db.class_members as of this revision.
    op.create_table(
        "class_members",
        sa.Column("class_name", sa.String(), primary_key=True),
        sa.Column("username", sa.String(), primary_key=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_class_members_username", "class_members", ["username"])


def downgrade() -> None:
    op.drop_index("ix_class_members_username", "class_members")
    op.drop_table("class_members")
    with op.batch_alter_table("exceptions") as batch:
        batch.drop_column("scope_label")
