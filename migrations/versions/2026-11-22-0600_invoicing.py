"""Invoicing: invoices and their per-provider lines made at period close, and Stripe webhook events.

Revision ID: 0002_invoicing
Revises: 0001_initial
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_invoicing"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("event_created", sa.BigInteger(), nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=True),
        sa.Column("stripe_invoice_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('applied', 'stale', 'ignored')", name=op.f("ck_stripe_events_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index("ix_stripe_events_account_created", ["account_name", "event_created"], unique=False)

    op.create_table(
        "invoices",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("payg_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("carried_in_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("carried_out_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_error", sa.String(length=512), nullable=True),
        sa.Column("stripe_event_created", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('nothing_due', 'pending', 'sent', 'open', 'paid', 'payment_failed')",
            name=op.f("ck_invoices_status"),
        ),
        sa.CheckConstraint(
            "amount_cents * 10000000 + carried_out_nano_usd = payg_nano_usd + carried_in_nano_usd",
            name=op.f("ck_invoices_cents_conserve_nanos"),
        ),
        sa.CheckConstraint(
            "carried_in_nano_usd >= 0 AND carried_in_nano_usd < 10000000", name=op.f("ck_invoices_carried_in_sub_cent")
        ),
        sa.CheckConstraint(
            "carried_out_nano_usd >= 0 AND carried_out_nano_usd < 10000000",
            name=op.f("ck_invoices_carried_out_sub_cent"),
        ),
        sa.CheckConstraint("payg_nano_usd > 0", name=op.f("ck_invoices_payg_positive")),
        sa.ForeignKeyConstraint(["account_name"], ["accounts.name"], name=op.f("fk_invoices_account_name_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("account_name", "period", name=op.f("uq_invoices_account_name_period")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_status", ["status"], unique=False)

    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("requests_count", sa.BigInteger(), nullable=False),
        sa.Column("amount_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("stripe_status", sa.String(length=16), nullable=False),
        sa.Column("stripe_invoice_item_id", sa.String(length=64), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "stripe_status IN ('pending', 'sent', 'skipped')", name=op.f("ck_invoice_lines_stripe_status")
        ),
        sa.CheckConstraint("requests_count >= 0", name=op.f("ck_invoice_lines_requests_non_negative")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_invoice_lines_invoice_id_invoices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint("invoice_id", "provider_id", name=op.f("uq_invoice_lines_invoice_id_provider_id")),
    )
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoice_lines_invoice_id"), ["invoice_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_lines_invoice_id"))

    op.drop_table("invoice_lines")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_status")

    op.drop_table("invoices")
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_account_created")

    op.drop_table("stripe_events")
