"""Join the two revisions that were written side by side on 0004, so the history has one head.

Databases already stamped with both 0005 revisions move here without change.

Revision ID: 0006
Revises: 0005_front, 0005_identity
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0006"
down_revision: tuple[str, ...] = ("0005_front", "0005_identity")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
