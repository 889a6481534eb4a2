"""Finance operations: credit grants and prepaid credits, their spendable balance per account, adjustments.

Revision ID: 0013_finance_credits
Revises: 0012_provider_reconciliations
Create Date: 2026-12-07 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_finance_credits"
down_revision = "0012_provider_reconciliations"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _account_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_name"], ["accounts.name"], name=op.f(f"fk_{table}_account_name_accounts"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("remaining_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("expires_period", sa.String(length=7), nullable=True),
        sa.Column("period", sa.String(length=7), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=96), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("refunded_nano_usd", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("source IN ('grant', 'prepaid')", name=op.f("ck_credit_grants_source")),
        sa.CheckConstraint("status IN ('pending', 'active', 'closed')", name=op.f("ck_credit_grants_status")),
        sa.CheckConstraint("amount_nano_usd > 0", name=op.f("ck_credit_grants_amount_positive")),
        sa.CheckConstraint(
            "remaining_nano_usd >= 0 AND remaining_nano_usd <= amount_nano_usd",
            name=op.f("ck_credit_grants_remaining_within"),
        ),
        _account_fk("credit_grants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_credit_grants_payment_intent_id")),
    )
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.create_index("ix_credit_grants_account_name_status", ["account_name", "status"], unique=False)

    op.create_table(
        "credit_balances",
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("available_nano_usd", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("available_nano_usd >= 0", name=op.f("ck_credit_balances_available_non_negative")),
        _account_fk("credit_balances"),
        sa.PrimaryKeyConstraint("account_name", name=op.f("pk_credit_balances")),
    )

    op.create_table(
        "adjustments",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("corrects_period", sa.String(length=7), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("request_ids", sa.JSON(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_by", sa.String(length=96), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_nano_usd <> 0", name=op.f("ck_adjustments_amount_non_zero")),
        sa.CheckConstraint("kind IN ('adjustment', 'carry')", name=op.f("ck_adjustments_kind")),
        _account_fk("adjustments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjustments")),
        sa.UniqueConstraint(
            "account_name", "idempotency_key", name=op.f("uq_adjustments_account_name_idempotency_key")
        ),
    )
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.create_index("ix_adjustments_account_name_period", ["account_name", "period"], unique=False)


def downgrade() -> None:
    op.drop_table("adjustments")
    op.drop_table("credit_balances")
    op.drop_table("credit_grants")
