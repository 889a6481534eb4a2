"""Closing a period at scale (PostgreSQL): 100,000 accounts, 10% with pay-as-you-go, Stripe excluded.

Every account got its credits grant in the period; one in ten also has five priced requests
spread over three providers, posted to its receivable. Rows are written with COPY (this
measures the close, not the pricing), then the period is closed in one transaction and
the result is checked: invoiced cents * 10^7 + carried remainders == pay-as-you-go.

    python bench/close.py [--accounts 100000] [--quick]

Target: <= 60 s for 100,000 accounts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
from _common import Row, asyncpg_dsn, pg_database, postgres_reachable, print_table

from metering.config import Settings, set_settings
from metering.db import Database
from metering.invoicing.service import invoicing_service
from metering.ledger import codes
from metering.money import NANO_PER_CENT

TARGET_SECONDS = 60.0
PERIOD = "2026-10"
STARTED = datetime(2026, 10, 15, tzinfo=UTC)
CLOSE_AT = datetime(2026, 11, 5, tzinfo=UTC)
PROVIDERS = ("together", "fireworks-ai", "hf-inference")
REQUESTS_PER_PAYG_ACCOUNT = 5
GRANT = 2_000_000_000


async def populate(dsn: str, accounts: int, rng: random.Random) -> int:
    """Accounts, providers, grants and priced requests; returns the pay-as-you-go total in nano-USD."""
    now = datetime.now(UTC)
    names = [f"user-{i:06d}" for i in range(accounts)]
    payg_accounts = names[::10]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(
            "accounts",
            columns=["name", "kind", "plan", "seats", "status", "created_at", "updated_at"],
            records=[(n, "user", "pro", 1, "active", now, now) for n in names],
        )
        await connection.copy_records_to_table(
            "providers",
            columns=[
                "id",
                "url",
                "request_id_header",
                "pricing",
                "credit_eligible",
                "default_estimate_nano_usd",
                "hardware_prices_nano_usd_per_second",
                "models",
                "created_at",
                "updated_at",
            ],
            records=[
                (p, "http://127.0.0.1:9", "Inference-Id", "compute_time", True, 0, "{}", "{}", now, now)
                for p in PROVIDERS
            ],
        )
        ledger_ids: dict[str, int] = {}
        ledger_rows = []

        def ledger_account(code: str) -> int:
            if code not in ledger_ids:
                parsed = codes.parse(code)
                ledger_ids[code] = len(ledger_ids) + 1
                ledger_rows.append([ledger_ids[code], code, parsed.kind, parsed.owner, parsed.period, 0])
            return ledger_ids[code]

        transactions, entries, usage = [], [], []

        def post(
            kind: str, key: str, account: str, provider: str | None, record: int | None, lines: list[tuple[str, int]]
        ) -> None:
            tx = len(transactions) + 1
            transactions.append((tx, kind, key, account, provider, PERIOD, record, now))
            for code, amount in lines:
                account_id = ledger_account(code)
                ledger_rows[account_id - 1][5] += amount
                entries.append((len(entries) + 1, tx, account_id, amount, PERIOD))

        for name in names:
            post(
                codes.GRANT,
                f"grant:{name}:{PERIOD}",
                name,
                None,
                None,
                [(codes.credits_expense(PERIOD), GRANT), (codes.credits(name, PERIOD), -GRANT)],
            )
        payg_total = 0
        for name in payg_accounts:
            for n in range(REQUESTS_PER_PAYG_ACCOUNT):
                provider = PROVIDERS[n % len(PROVIDERS)]
                cost = rng.randint(1, 500_000_000)
                record = len(usage) + 1
                usage.append(
                    (
                        record,
                        provider,
                        f"{name}-{n}",
                        name,
                        name,
                        False,
                        "org/model",
                        False,
                        STARTED,
                        PERIOD,
                        f"{record:032x}",
                        "priced",
                        0,
                        cost,
                        now,
                        now,
                        0,
                    )
                )
                post(
                    codes.REQUEST_COST,
                    f"cost:{record}",
                    name,
                    provider,
                    record,
                    [(codes.receivable(name, PERIOD), cost), (codes.payable(provider, PERIOD), -cost)],
                )
                payg_total += cost

        await connection.copy_records_to_table(
            "usage_records",
            columns=[
                "id",
                "provider_id",
                "request_id",
                "user_name",
                "billing_account",
                "bill_to_flagged",
                "model",
                "custom_key",
                "started_at",
                "period",
                "content_hash",
                "status",
                "estimate_nano_usd",
                "cost_nano_usd",
                "received_at",
                "priced_at",
                "attempts",
            ],
            records=usage,
        )
        await connection.copy_records_to_table(
            "ledger_accounts",
            columns=["id", "code", "kind", "owner", "period", "balance_nano_usd"],
            records=[tuple(row) for row in ledger_rows],
        )
        await connection.copy_records_to_table(
            "ledger_transactions",
            columns=[
                "id",
                "kind",
                "idempotency_key",
                "account_name",
                "provider_id",
                "period",
                "usage_record_id",
                "created_at",
            ],
            records=transactions,
        )
        await connection.copy_records_to_table(
            "ledger_entries",
            columns=["id", "transaction_id", "ledger_account_id", "amount_nano_usd", "period"],
            records=entries,
        )
        for table in ("usage_records", "ledger_accounts", "ledger_transactions", "ledger_entries"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
            await connection.execute(f"ANALYZE {table}")
        return payg_total
    finally:
        await connection.close()


async def run(url: str, accounts: int) -> list[Row]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as data_dir:
        set_settings(
            Settings(
                environment="embedded",
                database_url=url,
                data_dir=Path(data_dir),
                service_tokens="bench",
                secret_key=base64.urlsafe_b64encode(b"c" * 32).decode(),
                jwt_secret="bench-jwt-secret-long-enough",
            )
        )
        started = time.perf_counter()
        payg_total = await populate(asyncpg_dsn(url), accounts, rng)
        load_seconds = time.perf_counter() - started
        database = Database(url)
        try:
            started = time.perf_counter()
            async with database.session_scope() as session:
                result = await invoicing_service.close_period(session, period=PERIOD, force=True, now=CLOSE_AT)
            seconds = time.perf_counter() - started
            async with database.session_scope() as session:
                again = await invoicing_service.close_period(session, period=PERIOD, force=True, now=CLOSE_AT)
        finally:
            await database.dispose()
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            cents, carried, payg, line_cents = await connection.fetchrow(
                "SELECT sum(amount_cents), sum(carried_out_nano_usd), sum(payg_nano_usd), "
                "(SELECT sum(amount_cents) FROM invoice_lines) FROM invoices"
            )
            lines = await connection.fetchval("SELECT count(*) FROM invoice_lines")
        finally:
            await connection.close()
    assert again.outcome == "already_closed"
    assert payg == payg_total and cents * NANO_PER_CENT + carried == payg_total and line_cents == cents, (
        "cents do not add up"
    )
    note = f"{result.invoices + result.nothing_due:,} invoices, {lines:,} lines; setup {load_seconds:.1f} s"
    return [
        Row(
            f"close {accounts:,} accounts",
            seconds,
            "s",
            f"<= {TARGET_SECONDS:.0f} s",
            f"{seconds / TARGET_SECONDS:.2f}x of target; {note}",
        ),
        Row("invoices per second", (result.invoices + result.nothing_due) / seconds, "1/s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 accounts")
    args = parser.parse_args()
    if not postgres_reachable():
        sys.exit("PostgreSQL is not reachable (METERING_TEST_PG_DSN)")
    accounts = 10_000 if args.quick else args.accounts
    # Outside the event loop: making the database runs the migrations with their own loop.
    with pg_database() as (_name, url):
        rows = asyncio.run(run(url, accounts))
    print_table("period close (PostgreSQL, Stripe excluded)", rows)


if __name__ == "__main__":
    main()
