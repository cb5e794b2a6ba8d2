"""Voice applications: account voice webhooks, the calls table, conference status callbacks.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("voice_url", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("voice_method", sa.String(8), nullable=False, server_default="POST")
        )
        batch.add_column(sa.Column("voice_fallback_url", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("voice_fallback_method", sa.String(8), nullable=False, server_default="POST")
        )
        batch.add_column(sa.Column("status_callback", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("status_callback_method", sa.String(8), nullable=False, server_default="POST")
        )
    with op.batch_alter_table("conferences") as batch:
        batch.add_column(sa.Column("status_callback", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("status_callback_method", sa.String(8), nullable=False, server_default="POST")
        )
        batch.add_column(sa.Column("status_callback_event", sa.String(255), nullable=True))
    op.create_table(
        "calls",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column(
            "account_sid",
            sa.String(64),
            sa.ForeignKey("accounts.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("from_uri", sa.Text(), nullable=False),
        sa.Column("to_uri", sa.Text(), nullable=False),
        sa.Column("caller_name", sa.String(255), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("parent_call_sid", sa.String(64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("status_callback", sa.Text(), nullable=True),
        sa.Column("status_callback_method", sa.String(8), nullable=False),
        sa.Column("status_callback_event", sa.String(255), nullable=True),
        sa.Column("sip_response_code", sa.Integer(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_calls_account_created", "calls", ["account_sid", "date_created"])


def downgrade() -> None:
    op.drop_index("ix_calls_account_created", "calls")
    op.drop_table("calls")
    with op.batch_alter_table("conferences") as batch:
        for column in ("status_callback", "status_callback_method", "status_callback_event"):
            batch.drop_column(column)
    with op.batch_alter_table("accounts") as batch:
        for column in (
            "voice_url",
            "voice_method",
            "voice_fallback_url",
            "voice_fallback_method",
            "status_callback",
            "status_callback_method",
        ):
            batch.drop_column(column)
