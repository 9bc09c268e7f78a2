"""Access records say how the identity on them was obtained (network, proxy-basic,
kerberos, portal, accounting, unknown), so a DSL can tell a named pupil from a device;
and address_sessions: which user the sign-in page or RADIUS accounting put on which
device address, shared by every gateway process.

Revision ID: 0005_identity
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_identity"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.add_column(sa.Column("identity_source", sa.String()))
    # A frozen copy of schoolgate.db.address_sessions as of this revision.
    op.create_table(
        "address_sessions",
        sa.Column("address", sa.String(), primary_key=True),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_address_sessions_updated_at", "address_sessions", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_address_sessions_updated_at", "address_sessions")
    op.drop_table("address_sessions")
    with op.batch_alter_table("access_log") as batch:
        batch.drop_column("identity_source")
