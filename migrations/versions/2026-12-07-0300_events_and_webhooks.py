"""Events and webhooks: the outbox of events, accounts' alert thresholds, org webhook endpoints and deliveries.

``events`` rows are written in the transaction of the change that causes them, unique per
cause (``dedupe_key``); the deliverer turns each into one ``webhook_deliveries`` row per
endpoint (unique per event and target) and sends those with a lease, retries and back-off.

Revision ID: 0010_events_and_webhooks
Revises: 0009_cost_posting_plan
Create Date: 2026-12-07 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_events_and_webhooks"
down_revision = "0009_cost_posting_plan"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("webhook_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=48), nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fanned_out_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("audience IN ('account', 'platform')", name=op.f("ck_events_audience")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_events_dedupe_key")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_account_name_id", ["account_name", "id"], unique=False)
        batch_op.create_index("ix_events_fanned_out_at", ["fanned_out_at"], unique=False)

    op.create_table(
        "alert_settings",
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("credits_percent", sa.JSON(), nullable=False),
        sa.Column("spending_limit_percent", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_name"],
            ["accounts.name"],
            name=op.f("fk_alert_settings_account_name_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_name", name=op.f("pk_alert_settings")),
    )

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("secret_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(length=96), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_name"],
            ["accounts.name"],
            name=op.f("fk_webhook_endpoints_account_name_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_endpoints_account_name"), ["account_name"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("endpoint_id", BIG_ID, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retry_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=96), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_deliveries_status")),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name=op.f("fk_webhook_deliveries_event_id_events"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("event_id", "target", name=op.f("uq_webhook_deliveries_event_id_target")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_endpoint_id"), ["endpoint_id"], unique=False)
        batch_op.create_index(
            "ix_webhook_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("alert_settings")
    op.drop_table("events")
