"""Call streams: a stream belongs to a conference or to one call.

``streams.call_sid`` (nullable, indexed, a foreign key to ``calls``) is added and
``streams.conference_sid`` becomes nullable; exactly one of the two is set (docs/api.md, Calls).
SQLite cannot alter columns in place, so the table is rebuilt (Alembic batch mode).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.alter_column("conference_sid", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("call_sid", sa.String(64), nullable=True))
        batch.create_foreign_key(
            "fk_streams_call_sid_calls", "calls", ["call_sid"], ["sid"], ondelete="CASCADE"
        )
        batch.create_index("ix_streams_call", ["call_sid", "date_created"])


def downgrade() -> None:
    op.execute("DELETE FROM streams WHERE conference_sid IS NULL")
    with op.batch_alter_table("streams") as batch:
        batch.drop_index("ix_streams_call")
        batch.drop_constraint("fk_streams_call_sid_calls", type_="foreignkey")
        batch.drop_column("call_sid")
        batch.alter_column("conference_sid", existing_type=sa.String(64), nullable=False)
