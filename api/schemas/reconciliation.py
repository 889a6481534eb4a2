"""Bodies of the provider reconciliation routes (SPEC §8): the outcome of comparing a statement with the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metering.models import Reconciliation
from metering.reconciliation.service import LIST_LIMIT, Discrepancy, ReconciliationReport

_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "provider": "together",
    "period": "2026-11",
    "lines": 4,
    "matched": 2,
    "amount_mismatch_count": 1,
    "only_provider_count": 1,
    "only_ledger_count": 1,
    "provider_total_nano_usd": 3_700_000,
    "ledger_total_nano_usd": 3_400_000,
    "created_by": "fin",
    "reason": "November statement",
    "supersedes_id": None,
    "created_at": "2026-12-03T09:00:00Z",
}


class AmountMismatchRead(BaseModel):
    request_id: str
    ledger_nano_usd: int = Field(description="The cost the ledger posted to the provider's payable.")
    provider_nano_usd: int = Field(description="The cost the statement gives.")


class OnlyProviderRead(BaseModel):
    request_id: str
    provider_nano_usd: int = Field(description="The cost the statement gives; nothing was posted for it.")


class OnlyLedgerRead(BaseModel):
    request_id: str
    ledger_nano_usd: int = Field(description="The cost the ledger posted; the statement does not list it.")


class ReconciliationSummaryRead(BaseModel):
    """What comparing one statement found, in counts and totals; who uploaded it, when and why."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

    id: int
    provider: str
    period: str = Field(description="YYYY-MM: the requests whose started_at falls in it.")
    lines: int = Field(description="Request lines of the statement (the header not counted).")
    matched: int = Field(description="Requests on both sides with equal amounts.")
    amount_mismatch_count: int = Field(description="Requests on both sides with different amounts.")
    only_provider_count: int = Field(description="Requests on the statement whose cost was never posted.")
    only_ledger_count: int = Field(description="Requests whose cost was posted that the statement does not list.")
    provider_total_nano_usd: int = Field(description="Sum of the statement's costs.")
    ledger_total_nano_usd: int = Field(description="Sum of the costs posted for the period's requests of the provider.")
    created_by: str = Field(description="The finance user who uploaded the statement.")
    reason: str | None = Field(description="Why, as the uploader said; null if not given.")
    supersedes_id: int | None = Field(
        description="The provider's previous reconciliation of the period, which this one replaces as the latest."
    )
    created_at: datetime = Field(description="When the upload began, RFC 3339 UTC.")

    @classmethod
    def of(cls, reconciliation: Reconciliation) -> ReconciliationSummaryRead:
        return cls(
            id=reconciliation.id,
            provider=reconciliation.provider_id,
            period=reconciliation.period,
            lines=reconciliation.lines,
            matched=reconciliation.matched,
            amount_mismatch_count=reconciliation.amount_mismatch_count,
            only_provider_count=reconciliation.only_provider_count,
            only_ledger_count=reconciliation.only_ledger_count,
            provider_total_nano_usd=reconciliation.provider_total_nano_usd,
            ledger_total_nano_usd=reconciliation.ledger_total_nano_usd,
            created_by=reconciliation.created_by,
            reason=reconciliation.reason,
            supersedes_id=reconciliation.supersedes_id,
            created_at=reconciliation.created_at,
        )


def _amount(value: int | None) -> int:
    if value is None:
        raise ValueError("a discrepancy of this kind has this amount")
    return value


class ReconciliationRead(ReconciliationSummaryRead):
    """The summary, and the first discrepancies of each kind by request id (the counts and the export have all)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_SUMMARY_EXAMPLE,
                    "amount_mismatch": [
                        {"request_id": "req-2", "ledger_nano_usd": 1_000_000, "provider_nano_usd": 1_300_000}
                    ],
                    "only_provider": [{"request_id": "req-4", "provider_nano_usd": 200_000}],
                    "only_ledger": [{"request_id": "req-5", "ledger_nano_usd": 200_000}],
                }
            ]
        }
    )

    amount_mismatch: list[AmountMismatchRead] = Field(description=f"At most {LIST_LIMIT}, by request id.")
    only_provider: list[OnlyProviderRead] = Field(description=f"At most {LIST_LIMIT}, by request id.")
    only_ledger: list[OnlyLedgerRead] = Field(description=f"At most {LIST_LIMIT}, by request id.")

    @classmethod
    def of_report(cls, report: ReconciliationReport) -> ReconciliationRead:
        def mismatch(item: Discrepancy) -> AmountMismatchRead:
            return AmountMismatchRead(
                request_id=item.request_id,
                ledger_nano_usd=_amount(item.ledger_nano_usd),
                provider_nano_usd=_amount(item.provider_nano_usd),
            )

        return cls(
            **ReconciliationSummaryRead.of(report.reconciliation).model_dump(),
            amount_mismatch=[mismatch(item) for item in report.amount_mismatch],
            only_provider=[
                OnlyProviderRead(request_id=item.request_id, provider_nano_usd=_amount(item.provider_nano_usd))
                for item in report.only_provider
            ],
            only_ledger=[
                OnlyLedgerRead(request_id=item.request_id, ledger_nano_usd=_amount(item.ledger_nano_usd))
                for item in report.only_ledger
            ],
        )


class ReconciliationList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_SUMMARY_EXAMPLE]}]})

    items: list[ReconciliationSummaryRead] = Field(
        description="Complete reconciliations of the period, by provider, newest first within each."
    )
