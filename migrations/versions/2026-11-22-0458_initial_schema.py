"""Initial schema: accounts, providers, usage records, ledger, holds and period state.

Revision ID: 0001_initial
Revises: (none)
Create Date: 2026-11-22 04:58:19.706838
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("name", sa.String(length=96), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spending_limit_nano_usd", sa.BigInteger(), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('user', 'org')", name=op.f("ck_accounts_kind")),
        sa.CheckConstraint("status IN ('active', 'delinquent')", name=op.f("ck_accounts_status")),
        sa.CheckConstraint("seats >= 0", name=op.f("ck_accounts_seats_non_negative")),
        sa.CheckConstraint(
            "spending_limit_nano_usd IS NULL OR spending_limit_nano_usd >= 0",
            name=op.f("ck_accounts_limit_non_negative"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_accounts")),
    )
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("code", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=96), nullable=True),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("balance_nano_usd", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("code", name=op.f("uq_ledger_accounts_code")),
    )
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_accounts_owner_period", ["owner", "period"], unique=False)

    op.create_table(
        "periods",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_periods")),
    )
    op.create_table(
        "providers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("request_id_header", sa.String(length=128), nullable=False),
        sa.Column("pricing", sa.String(length=16), nullable=False),
        sa.Column("cost_endpoint", sa.String(length=2048), nullable=True),
        sa.Column("cost_token_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("credit_eligible", sa.Boolean(), nullable=False),
        sa.Column("default_estimate_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("hardware_prices_nano_usd_per_second", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("pricing IN ('cost_endpoint', 'compute_time')", name=op.f("ck_providers_pricing")),
        sa.CheckConstraint("default_estimate_nano_usd >= 0", name=op.f("ck_providers_estimate_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_providers")),
    )
    op.create_table(
        "account_periods",
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("granted_seats", sa.Integer(), nullable=False),
        sa.Column("credits_granted_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("credits_used_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("payg_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("written_off_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("pending_estimate_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("held_nano_usd", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("held_nano_usd >= 0", name=op.f("ck_account_periods_held_non_negative")),
        sa.CheckConstraint("pending_estimate_nano_usd >= 0", name=op.f("ck_account_periods_pending_non_negative")),
        sa.ForeignKeyConstraint(
            ["account_name"],
            ["accounts.name"],
            name=op.f("fk_account_periods_account_name_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_name", "period", name=op.f("pk_account_periods")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("actor", sa.String(length=96), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("before", sa.String(), nullable=False),
        sa.Column("after", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_name"], ["accounts.name"], name=op.f("fk_audit_events_account_name_accounts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_account_name"), ["account_name"], unique=False)

    op.create_table(
        "cost_estimates",
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("mean_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"], ["providers.id"], name=op.f("fk_cost_estimates_provider_id_providers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("provider_id", "model", name=op.f("pk_cost_estimates")),
    )
    op.create_table(
        "disabled_providers",
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_name"],
            ["accounts.name"],
            name=op.f("fk_disabled_providers_account_name_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_name", "provider_id", name=op.f("pk_disabled_providers")),
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("user_name", sa.String(length=96), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("amount_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("usage_record_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("status IN ('held', 'attached', 'released', 'expired')", name=op.f("ck_holds_status")),
        sa.CheckConstraint("amount_nano_usd >= 0", name=op.f("ck_holds_amount_non_negative")),
        sa.ForeignKeyConstraint(
            ["account_name"], ["accounts.name"], name=op.f("fk_holds_account_name_accounts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index("ix_holds_status_expires_at", ["status", "expires_at"], unique=False)

    op.create_table(
        "memberships",
        sa.Column("org_name", sa.String(length=96), nullable=False),
        sa.Column("user_name", sa.String(length=96), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'write', 'read')", name=op.f("ck_memberships_role")),
        sa.ForeignKeyConstraint(
            ["org_name"], ["accounts.name"], name=op.f("fk_memberships_org_name_accounts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_name"], ["accounts.name"], name=op.f("fk_memberships_user_name_accounts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("org_name", "user_name", name=op.f("pk_memberships")),
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_memberships_user_name"), ["user_name"], unique=False)

    op.create_table(
        "provider_collection_state",
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("backoff_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("circuit_open_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["providers.id"],
            name=op.f("fk_provider_collection_state_provider_id_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("provider_id", name=op.f("pk_provider_collection_state")),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("user_name", sa.String(length=96), nullable=False),
        sa.Column("bill_to", sa.String(length=96), nullable=True),
        sa.Column("billing_account", sa.String(length=96), nullable=False),
        sa.Column("bill_to_flagged", sa.Boolean(), nullable=False),
        sa.Column("bill_to_flag_reason", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=True),
        sa.Column("custom_key", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("hardware", sa.String(length=64), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("hold_id", sa.String(length=36), nullable=True),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("estimate_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("cost_nano_usd", sa.BigInteger(), nullable=True),
        sa.Column("quarantine_reason", sa.String(length=256), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("priced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'priced') = (cost_nano_usd IS NOT NULL)", name=op.f("ck_usage_records_priced_has_cost")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'priced', 'custom_key', 'unpriced', 'quarantined')",
            name=op.f("ck_usage_records_status"),
        ),
        sa.CheckConstraint(
            "cost_nano_usd IS NULL OR cost_nano_usd >= 0", name=op.f("ck_usage_records_cost_non_negative")
        ),
        sa.CheckConstraint("estimate_nano_usd >= 0", name=op.f("ck_usage_records_estimate_non_negative")),
        sa.ForeignKeyConstraint(
            ["billing_account"], ["accounts.name"], name=op.f("fk_usage_records_billing_account_accounts")
        ),
        sa.ForeignKeyConstraint(["provider_id"], ["providers.id"], name=op.f("fk_usage_records_provider_id_providers")),
        sa.ForeignKeyConstraint(["user_name"], ["accounts.name"], name=op.f("fk_usage_records_user_name_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint("provider_id", "request_id", name=op.f("uq_usage_records_provider_id_request_id")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_billing_period_status", ["billing_account", "period", "status"], unique=False
        )
        batch_op.create_index("ix_usage_records_billing_time", ["billing_account", "started_at"], unique=False)
        batch_op.create_index("ix_usage_records_collect", ["provider_id", "status", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_usage_records_hold_id"), ["hold_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_usage_records_user_name"), ["user_name"], unique=False)

    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=True),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("original_period", sa.String(length=7), nullable=True),
        sa.Column("usage_record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("memo", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["usage_record_id"], ["usage_records.id"], name=op.f("fk_ledger_transactions_usage_record_id_usage_records")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_transactions_idempotency_key")),
        sa.UniqueConstraint("usage_record_id", name=op.f("uq_ledger_transactions_usage_record_id")),
    )
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_transactions_account_name"), ["account_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_ledger_transactions_period"), ["period"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("transaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ledger_account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("amount_nano_usd", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ledger_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_entries_ledger_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_entries_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_entries_ledger_account_id"), ["ledger_account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ledger_entries_transaction_id"), ["transaction_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_transaction_id"))
        batch_op.drop_index(batch_op.f("ix_ledger_entries_ledger_account_id"))

    op.drop_table("ledger_entries")
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_transactions_period"))
        batch_op.drop_index(batch_op.f("ix_ledger_transactions_account_name"))

    op.drop_table("ledger_transactions")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_records_user_name"))
        batch_op.drop_index(batch_op.f("ix_usage_records_hold_id"))
        batch_op.drop_index("ix_usage_records_collect")
        batch_op.drop_index("ix_usage_records_billing_time")
        batch_op.drop_index("ix_usage_records_billing_period_status")

    op.drop_table("usage_records")
    op.drop_table("provider_collection_state")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_memberships_user_name"))

    op.drop_table("memberships")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_status_expires_at")

    op.drop_table("holds")
    op.drop_table("disabled_providers")
    op.drop_table("cost_estimates")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_account_name"))

    op.drop_table("audit_events")
    op.drop_table("account_periods")
    op.drop_table("providers")
    op.drop_table("periods")
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_accounts_owner_period")

    op.drop_table("ledger_accounts")
    op.drop_table("accounts")
