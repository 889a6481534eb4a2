"""Credits granted ahead of their period, until it begins.

The grant-credits job grants next month's credits in the last hours of a month, so an
account's first request of the month finds them granted and is decided like any other.
``credits_granted_ahead`` marks such a grant until the period has begun and the grant has
been checked against the plan the account has then (a plan lowered meanwhile gets the
lower credits, as a grant made at the start would have). Existing rows were granted in
their own period: false.

Revision ID: 0011_credits_granted_ahead
Revises: 0010_events_and_webhooks
Create Date: 2026-12-07 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_credits_granted_ahead"
down_revision = "0010_events_and_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "account_periods",
        sa.Column("credits_granted_ahead", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("account_periods") as batch:
        batch.drop_column("credits_granted_ahead")
