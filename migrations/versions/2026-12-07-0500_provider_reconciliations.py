"""Provider reconciliations: a provider's monthly statement against the ledger (SPEC §8).

``reconciliations`` (append-only, its own audit trail), ``reconciliation_items`` (every
discrepancy) and ``reconciliation_lines``, the staging area a statement streams into before
it is compared in SQL. On PostgreSQL the staging table is UNLOGGED: its rows live for one
upload, so writing them to the WAL (and to replicas) would only slow a 10M-line load; a crash
empties it, and the loading reconciliation it belonged to is swept.

Revision ID: 0012_provider_reconciliations
Revises: 0011_credits_granted_ahead
Create Date: 2026-12-07 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_provider_reconciliations"
down_revision = "0011_credits_granted_ahead"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("matched", sa.BigInteger(), nullable=False),
        sa.Column("amount_mismatch_count", sa.BigInteger(), nullable=False),
        sa.Column("only_provider_count", sa.BigInteger(), nullable=False),
        sa.Column("only_ledger_count", sa.BigInteger(), nullable=False),
        sa.Column("provider_total_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("ledger_total_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=96), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("supersedes_id", BIG_ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('loading', 'complete')", name=op.f("ck_reconciliations_status")),
        sa.CheckConstraint(
            "lines >= 0 AND matched >= 0 AND amount_mismatch_count >= 0 AND only_provider_count >= 0 "
            "AND only_ledger_count >= 0 AND provider_total_nano_usd >= 0 AND ledger_total_nano_usd >= 0",
            name=op.f("ck_reconciliations_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"], ["providers.id"], name=op.f("fk_reconciliations_provider_id_providers")
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["reconciliations.id"], name=op.f("fk_reconciliations_supersedes_id_reconciliations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
    )
    with op.batch_alter_table("reconciliations", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliations_period_provider_id", ["period", "provider_id", "id"], unique=False)

    op.create_table(
        "reconciliation_items",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("reconciliation_id", BIG_ID, nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ledger_nano_usd", sa.BigInteger(), nullable=True),
        sa.Column("provider_nano_usd", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('amount_mismatch', 'only_provider', 'only_ledger')", name=op.f("ck_reconciliation_items_kind")
        ),
        sa.CheckConstraint(
            "(kind = 'amount_mismatch' AND ledger_nano_usd IS NOT NULL AND provider_nano_usd IS NOT NULL)"
            " OR (kind = 'only_provider' AND ledger_nano_usd IS NULL AND provider_nano_usd IS NOT NULL)"
            " OR (kind = 'only_ledger' AND ledger_nano_usd IS NOT NULL AND provider_nano_usd IS NULL)",
            name=op.f("ck_reconciliation_items_amounts_of_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["reconciliation_id"],
            ["reconciliations.id"],
            name=op.f("fk_reconciliation_items_reconciliation_id_reconciliations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_items")),
        sa.UniqueConstraint(
            "reconciliation_id",
            "kind",
            "request_id",
            name=op.f("uq_reconciliation_items_reconciliation_id_kind_request_id"),
        ),
    )

    op.create_table(
        "reconciliation_lines",
        sa.Column("reconciliation_id", BIG_ID, nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("cost_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("reconciliation_id", "request_id", name=op.f("pk_reconciliation_lines")),
        prefixes=["UNLOGGED"] if op.get_context().dialect.name == "postgresql" else [],
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("reconciliation_lines")
    op.drop_table("reconciliation_items")
    op.drop_table("reconciliations")
