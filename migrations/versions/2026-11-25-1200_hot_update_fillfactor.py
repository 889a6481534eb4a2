"""Room on each page for HOT updates of the rows cost collection rewrites in place.

A cost batch leases 10,000 usage records, then prices them; every batch also rewrites the
totals of its accounts' periods and the balances of their ledger accounts. None of those
writes changes an indexed column except the status of a usage record, so with free space on
the page PostgreSQL updates them in place (HOT) instead of adding an entry to every index.
Applies to pages written from now on (existing pages keep their fill until rewritten).
SQLite has no fillfactor; nothing changes there.

Revision ID: 0004_hot_update_fillfactor
Revises: 0003_usage_series_cover
Create Date: 2026-11-25 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0004_hot_update_fillfactor"
down_revision = "0003_usage_series_cover"
branch_labels = None
depends_on = None

FILLFACTORS = {"usage_records": 70, "account_periods": 50, "ledger_accounts": 70}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table, fillfactor in FILLFACTORS.items():
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {fillfactor})")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in FILLFACTORS:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
