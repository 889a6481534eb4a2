"""A provider's statement read as it streams: ``request_id,cost_nano_usd`` CSV, checked line by line, in batches.

The format, strictly: a first line that is exactly ``request_id,cost_nano_usd``, then one line
per request, ``<request id>,<cost>``. Lines end in LF or CRLF; the last may end in neither. A
request id is 1 to 256 printable characters of UTF-8 (what ingest accepts, SPEC §5.2), quoted
by the rules of CSV when it holds a comma or a quote. A cost is a whole number of nano-USD
written in ASCII digits: no sign, point, exponent or blank, at most ``MAX_COST_NANO_USD``. A
blank line is a bad line. The first bad line is refused with its number; nothing is partly
taken.

Memory stays constant: the body is read chunk by chunk and handed on ``batch_lines`` lines at
a time; a line may not run past ``MAX_LINE_BYTES`` without ending.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from metering.reconciliation.errors import InvalidStatement, StatementTooLarge
from metering.usage.validation import MAX_REQUEST_ID

HEADER = b"request_id,cost_nano_usd"
# Bounds of one statement: twice the 10M-line month a large provider sends, and 1 GiB.
MAX_LINES = 20_000_000
MAX_BYTES = 1 << 30
# Longest line: a request id of 256 four-byte characters, every one a quote doubled inside quotes,
# a comma, 19 digits and CRLF fit with room to spare.
MAX_LINE_BYTES = 4096
# Lines handed on at a time: one staging transaction each (``metering.reconciliation.service``).
BATCH_LINES = 20_000
# The largest amount a BIGINT column holds: a cost, and the statement's total.
MAX_COST_NANO_USD = 2**63 - 1
_MAX_COST_DIGITS = len(str(MAX_COST_NANO_USD))
_TOTAL_PROBLEM = f"the costs up to this line add up to more than {MAX_COST_NANO_USD} nano-USD"

# (request id, cost in nano-USD, line number): one statement line as staged.
StatementLine = tuple[str, int, int]


@dataclass(slots=True)
class StatementTally:
    """What the statement held so far: request lines, the sum of their costs, bytes read."""

    lines: int = 0
    total_nano_usd: int = 0
    bytes_read: int = 0


def _header_problem(raw: bytes) -> str:
    shown = raw.decode("utf-8", errors="replace")
    return f"the header must be exactly {HEADER.decode()!r}, got {shown[:80]!r}"


def _field_problem(request_id: str, cost: str) -> str | None:
    """Why the two fields of a line are not a request id and a cost, or None."""
    if not request_id:
        return "request_id is empty"
    if len(request_id) > MAX_REQUEST_ID:
        return f"request_id is longer than {MAX_REQUEST_ID} characters"
    if not request_id.isprintable():
        return f"request_id {request_id[:80]!r} has a character that is not printable"
    if not cost:
        return f"cost_nano_usd of {request_id[:80]!r} is empty"
    if not (cost.isascii() and cost.isdigit()):
        return f"cost_nano_usd {cost[:40]!r} is not a whole, non-negative number of nano-USD (digits only)"
    if len(cost) > _MAX_COST_DIGITS or int(cost) > MAX_COST_NANO_USD:
        return f"cost_nano_usd {cost[:40]} is larger than {MAX_COST_NANO_USD}"
    return None


def parse_line(raw: bytes, number: int) -> tuple[str, int]:
    """One request line (its LF removed, CR kept) as (request id, cost); ``InvalidStatement`` naming it otherwise.

    The careful path, for lines with quotes and for explaining a refusal; ``read_statement``
    takes plain lines faster and gives any line it does not take to this function.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if not raw:
        raise InvalidStatement("the line is empty", line=number)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidStatement(f"the line is not UTF-8 (byte {exc.start + 1})", line=number) from exc
    if "\r" in text:
        raise InvalidStatement("a carriage return inside the line", line=number)
    if not text.startswith('"') and '"' in text.partition(",")[0]:
        # csv would take it as a literal quote; a statement quotes a request id that holds one.
        raise InvalidStatement(
            "a quote inside an unquoted request_id (quote the field, doubling its quotes)", line=number
        )
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise InvalidStatement(f"not a CSV line ({exc})", line=number) from exc
    if len(fields) != 2:
        raise InvalidStatement(f"expected 2 fields (request_id,cost_nano_usd), got {len(fields)}", line=number)
    request_id, cost = fields
    problem = _field_problem(request_id, cost)
    if problem is not None:
        raise InvalidStatement(problem, line=number)
    return request_id, int(cost)


async def read_statement(
    chunks: AsyncIterable[bytes],
    *,
    tally: StatementTally,
    batch_lines: int = BATCH_LINES,
    max_lines: int | None = None,
    max_bytes: int | None = None,
) -> AsyncIterator[list[StatementLine]]:
    """The statement's request lines in order, ``batch_lines`` at a time; ``tally`` counts as they pass.

    Raises ``InvalidStatement`` at the first bad line and ``StatementTooLarge`` past ``max_lines``
    request lines or ``max_bytes`` bytes (default ``MAX_LINES`` and ``MAX_BYTES``).
    """
    max_lines = MAX_LINES if max_lines is None else max_lines
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    pending = b""
    number = 0  # lines read; the header is line 1
    total = 0
    batch: list[StatementLine] = []
    async for chunk in chunks:
        if not chunk:
            continue
        tally.bytes_read += len(chunk)
        if tally.bytes_read > max_bytes:
            raise StatementTooLarge(f"the statement is larger than {max_bytes} bytes")
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        if len(pending) > MAX_LINE_BYTES:
            raise InvalidStatement(f"the line is longer than {MAX_LINE_BYTES} bytes", line=number + len(parts) + 1)
        if number + len(parts) - 1 > max_lines:
            raise StatementTooLarge(f"the statement has more than {max_lines} lines after its header")
        for raw in parts:
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InvalidStatement(f"the line is longer than {MAX_LINE_BYTES} bytes", line=number)
            if number == 1:
                if raw.removesuffix(b"\r") != HEADER:
                    raise InvalidStatement(_header_problem(raw), line=1)
                continue
            # The everyday line, checked without building a CSV reader: no quote, one comma, digits.
            request_bytes, comma, cost_bytes = raw.partition(b",")
            if cost_bytes.endswith(b"\r"):
                cost_bytes = cost_bytes[:-1]
            if (
                comma
                and b'"' not in request_bytes
                and cost_bytes.isdigit()
                and len(cost_bytes) < _MAX_COST_DIGITS
                and 0 < len(request_bytes) <= MAX_REQUEST_ID
            ):
                try:
                    request_id = request_bytes.decode("utf-8")
                except UnicodeDecodeError:
                    request_id = ""
                if request_id and request_id.isprintable():
                    cost = int(cost_bytes)
                else:
                    request_id, cost = parse_line(raw, number)
            else:
                request_id, cost = parse_line(raw, number)
            total += cost
            if total > MAX_COST_NANO_USD:
                raise InvalidStatement(_TOTAL_PROBLEM, line=number)
            batch.append((request_id, cost, number))
            if len(batch) >= batch_lines:
                _count(tally, batch, total)
                yield batch
                batch = []
    if pending:
        number += 1
        if number == 1:
            if pending.removesuffix(b"\r") != HEADER:
                raise InvalidStatement(_header_problem(pending), line=1)
        else:
            request_id, cost = parse_line(pending, number)
            total += cost
            if total > MAX_COST_NANO_USD:
                raise InvalidStatement(_TOTAL_PROBLEM, line=number)
            batch.append((request_id, cost, number))
    if number == 0:
        raise InvalidStatement(f"the statement is empty; its first line must be {HEADER.decode()!r}", line=1)
    if number - 1 > max_lines:
        raise StatementTooLarge(f"the statement has more than {max_lines} lines after its header")
    if batch:
        _count(tally, batch, total)
        yield batch


def _count(tally: StatementTally, batch: list[StatementLine], total: int) -> None:
    tally.lines += len(batch)
    tally.total_nano_usd = total
