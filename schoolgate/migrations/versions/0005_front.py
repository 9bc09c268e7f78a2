"""Access records say how long a connection lasted and whether its URL was cut.

Revision ID: 0005_front
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_front"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.add_column(sa.Column("url_cut", sa.Boolean()))
        batch.add_column(sa.Column("duration_ms", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.drop_column("duration_ms")
        batch.drop_column("url_cut")
