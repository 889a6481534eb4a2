"""The plan an account was on when a cost was posted.

A receivable run up on a pay-as-you-go plan stays owed after a downgrade to a plan without
it: invoicing and ``metering verify`` judge each charge by the plan it was made under, not
by the plan at close. Existing cost transactions get their account's plan of today (the
best record there is of it).

Revision ID: 0009_cost_posting_plan
Revises: 0008_in_flight_payg_only
Create Date: 2026-12-07 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_cost_posting_plan"
down_revision = "0008_in_flight_payg_only"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_transactions", sa.Column("plan", sa.String(length=32), nullable=True))
    op.execute(
        "UPDATE ledger_transactions SET plan = (SELECT a.plan FROM accounts a WHERE a.name = ledger_transactions.account_name)"
        " WHERE kind IN ('request_cost', 'late_request_cost')"
    )


def downgrade() -> None:
    with op.batch_alter_table("ledger_transactions") as batch:
        batch.drop_column("plan")
