"""In-flight amounts that credits can never pay, and the flag of a record whose hold was not its own.

``held_payg_only_nano_usd`` and ``pending_payg_only_nano_usd`` are the parts of
``held_nano_usd`` and ``pending_estimate_nano_usd`` whose provider is not credit-eligible:
authorize counts them toward pay-as-you-go in full (SPEC §5.1). Existing rows are filled
from the holds and pending records they cache. ``hold_flag_reason`` marks a usage record
that named a hold of another user, billing account or provider (the hold was left alone).

Revision ID: 0008_in_flight_payg_only
Revises: 0007_drop_unused_usage_indexes
Create Date: 2026-12-06 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_in_flight_payg_only"
down_revision = "0007_drop_unused_usage_indexes"
branch_labels = None
depends_on = None

COLUMNS = ("held_payg_only_nano_usd", "pending_payg_only_nano_usd")


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("account_periods", sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("usage_records", sa.Column("hold_flag_reason", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE account_periods SET held_payg_only_nano_usd = coalesce(("
        " SELECT sum(h.amount_nano_usd) FROM holds h JOIN providers p ON p.id = h.provider_id"
        " WHERE h.account_name = account_periods.account_name AND h.period = account_periods.period"
        " AND h.status = 'held' AND NOT p.credit_eligible), 0),"
        " pending_payg_only_nano_usd = coalesce(("
        " SELECT sum(u.estimate_nano_usd) FROM usage_records u JOIN providers p ON p.id = u.provider_id"
        " WHERE u.billing_account = account_periods.account_name AND u.period = account_periods.period"
        " AND u.status = 'pending' AND NOT p.credit_eligible), 0)"
    )
    if op.get_context().dialect.name == "postgresql":
        op.create_check_constraint(
            op.f("ck_account_periods_held_payg_only_within_held"),
            "account_periods",
            "held_payg_only_nano_usd >= 0 AND held_payg_only_nano_usd <= held_nano_usd",
        )
        op.create_check_constraint(
            op.f("ck_account_periods_pending_payg_only_within_pending"),
            "account_periods",
            "pending_payg_only_nano_usd >= 0 AND pending_payg_only_nano_usd <= pending_estimate_nano_usd",
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_constraint("ck_account_periods_held_payg_only_within_held", "account_periods")
        op.drop_constraint("ck_account_periods_pending_payg_only_within_pending", "account_periods")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("hold_flag_reason")
    with op.batch_alter_table("account_periods") as batch:
        for column in COLUMNS:
            batch.drop_column(column)
