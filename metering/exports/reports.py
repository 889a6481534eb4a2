"""The finance reports (SPEC §8): their names and columns, shared by every output format.

A column's type is one of ``int`` (nano-USD amounts and ids), ``str``, ``datetime`` (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass

from metering.errors import InvalidInput


class UnknownReport(InvalidInput):
    """A report or format name that does not exist."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "int" | "str" | "datetime"


@dataclass(frozen=True)
class Report:
    name: str
    description: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]


def _cols(spec: str) -> tuple[Column, ...]:
    """``"a:int b:str"`` → columns."""
    return tuple(Column(*item.split(":")) for item in spec.split())


REPORTS: dict[str, Report] = {
    report.name: report
    for report in (
        Report(
            "ledger",
            "Every ledger entry of the period's transactions, with its transaction's fields (signed: debit > 0).",
            _cols(
                "entry_id:int transaction_id:int transaction_kind:str idempotency_key:str account_name:str "
                "provider_id:str period:str original_period:str usage_record_id:int request_id:str memo:str "
                "created_at:datetime "
                "ledger_account:str ledger_account_kind:str ledger_account_owner:str amount_nano_usd:int"
            ),
        ),
        Report(
            "provider-payables",
            "What the platform owes each provider for the period: minus the sum of its payable entries.",
            _cols("provider_id:str period:str payable_nano_usd:int entries:int"),
        ),
        Report(
            "receivables",
            "Pay-as-you-go owed by each account for the period: the sum of its receivable entries.",
            _cols("account_name:str period:str receivable_nano_usd:int entries:int"),
        ),
        Report(
            "credits",
            "Each account's credits ledger for the period: granted, used by requests, other movements "
            "(e.g. expiry), and the signed balance (negative = still available).",
            _cols(
                "account_name:str period:str granted_nano_usd:int used_nano_usd:int "
                "other_nano_usd:int balance_nano_usd:int"
            ),
        ),
        Report(
            "unpriced",
            "Requests of the period never charged: unpriced (no cost past the maximum age) or quarantined.",
            _cols(
                "usage_record_id:int provider_id:str request_id:str user_name:str billing_account:str model:str "
                "started_at:datetime status:str reason:str estimate_nano_usd:int attempts:int received_at:datetime"
            ),
        ),
        Report(
            "drift",
            "Per provider and model: the estimates behind holds and pending amounts against the prices "
            "reported, over priced requests that had an estimate. Means are floor divisions; the error is "
            "price - estimate; p95 is the nearest-rank absolute error.",
            _cols(
                "provider_id:str model:str period:str requests:int mean_estimate_nano_usd:int "
                "mean_price_nano_usd:int mean_error_nano_usd:int p95_abs_error_nano_usd:int"
            ),
        ),
        Report(
            "reconciliation",
            "Every discrepancy of the latest complete reconciliation of each provider's statement for the period: "
            "kind amount_mismatch (both amounts), only_provider (no ledger amount) or only_ledger (no provider "
            "amount); a provider whose latest reconciliation matched in full, or that has none, has no rows.",
            _cols(
                "item_id:int reconciliation_id:int provider_id:str period:str kind:str request_id:str "
                "ledger_nano_usd:int provider_nano_usd:int reconciled_at:datetime"
            ),
        ),
    )
}

FORMATS = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


def get_report(name: str) -> Report:
    report = REPORTS.get(name)
    if report is None:
        raise UnknownReport(f"unknown report {name!r}; one of {', '.join(REPORTS)}", report=name)
    return report


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownReport(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}", format=fmt)
    return fmt
