"""Initial schema: accounts, conferences, participants, streams, stream status history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column("auth_token", sa.String(128), nullable=False),
        sa.Column("friendly_name", sa.String(255), nullable=True),
        sa.Column("stream_base_url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "conferences",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column(
            "account_sid",
            sa.String(64),
            sa.ForeignKey("accounts.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("friendly_name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("reason_ended", sa.Text(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
    )
    op.create_index(
        "ix_conferences_account_created", "conferences", ["account_sid", "date_created"]
    )
    op.create_index(
        "uq_conferences_live_name",
        "conferences",
        ["account_sid", "friendly_name"],
        unique=True,
        sqlite_where=sa.text("status <> 'completed'"),
        postgresql_where=sa.text("status <> 'completed'"),
    )
    op.create_table(
        "participants",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column(
            "conference_sid",
            sa.String(64),
            sa.ForeignKey("conferences.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "account_sid",
            sa.String(64),
            sa.ForeignKey("accounts.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("muted", sa.Boolean(), nullable=False),
        sa.Column("hold", sa.Boolean(), nullable=False),
        sa.Column("coaching", sa.Boolean(), nullable=False),
        sa.Column("call_sid_to_coach", sa.String(64), nullable=True),
        sa.Column("start_conference_on_enter", sa.Boolean(), nullable=False),
        sa.Column("end_conference_on_exit", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("reason_ended", sa.Text(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
    )
    op.create_index(
        "ix_participants_conference", "participants", ["conference_sid", "date_created"]
    )
    op.create_table(
        "streams",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column(
            "conference_sid",
            sa.String(64),
            sa.ForeignKey("conferences.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "account_sid",
            sa.String(64),
            sa.ForeignKey("accounts.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("track", sa.String(32), nullable=False),
        sa.Column("codec", sa.String(32), nullable=False),
        sa.Column("realtime", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("status_callback", sa.Text(), nullable=True),
        sa.Column("status_callback_method", sa.String(8), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_streams_conference", "streams", ["conference_sid", "date_created"])
    op.create_table(
        "stream_status_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "stream_sid",
            sa.String(64),
            sa.ForeignKey("streams.sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("code", sa.Integer(), nullable=True),
    )
    op.create_index(
        "ix_stream_status_history_stream", "stream_status_history", ["stream_sid", "id"]
    )


def downgrade() -> None:
    op.drop_table("stream_status_history")
    op.drop_table("streams")
    op.drop_table("participants")
    op.drop_table("conferences")
    op.drop_table("accounts")
