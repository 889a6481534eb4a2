"""Drop the two indexes of ``usage_records`` that no query reads: ``user_name`` and ``hold_id``.

Every insert of a usage record and every move out of ``pending`` (not a HOT update: the
status is indexed) writes an entry into each index of the table; these two were a quarter
of them. Members are read through ``ix_usage_records_billing_time`` (billing account first,
``user_name`` included), holds are found by their own id in ``holds``, and accounts are never
deleted or renamed, so the foreign key on ``user_name`` needs no index for its checks.

Revision ID: 0007_drop_unused_usage_indexes
Revises: 0006_usage_rollups_hourly
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007_drop_unused_usage_indexes"
down_revision = "0006_usage_rollups_hourly"
branch_labels = None
depends_on = None

INDEXES = {"ix_usage_records_user_name": "user_name", "ix_usage_records_hold_id": "hold_id"}


def upgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="usage_records")


def downgrade() -> None:
    for name, column in INDEXES.items():
        op.create_index(name, "usage_records", [column], unique=False)
