"""Errors of provider reconciliation: a statement that cannot be read, or one too large to take.

MeteringError
├── InvalidInput
│   ├── InvalidStatement        a line of the statement is malformed (names the line)
│   │   └── DuplicateRequestId  a request id stated on two lines (names both)
│   ├── StatementTooLarge       more lines or bytes than a statement may have
│   └── InvalidPeriod           not a period a caller may reconcile
└── NotFound
    └── ProviderNotFound        (metering.errors) no such provider
"""

from __future__ import annotations

from metering.errors import InvalidInput


class InvalidStatement(InvalidInput):
    """The statement is not ``request_id,cost_nano_usd`` lines; ``line`` is the first bad one (the header is 1)."""

    def __init__(self, detail: str, *, line: int) -> None:
        super().__init__(f"line {line}: {detail}", line=line)
        self.line = line


class DuplicateRequestId(InvalidStatement):
    """A request id appears twice; ``line`` is the second appearance, ``first_line`` the first."""

    def __init__(self, request_id: str, *, line: int, first_line: int) -> None:
        super().__init__(f"request_id {request_id!r} was already stated on line {first_line}", line=line)
        self.first_line = first_line


class StatementTooLarge(InvalidInput):
    """More lines or bytes than one statement may have (``metering.reconciliation.statement``)."""


class InvalidPeriod(InvalidInput):
    """A period outside YYYY-MM from 1970-01 to 9998-12."""


class StagedTwice(Exception):
    """A request id of a staged batch was staged already, or twice in the batch; its transaction rolls back.

    Not a ``MeteringError``: the service turns it into ``DuplicateRequestId`` once it has found the lines.
    """
