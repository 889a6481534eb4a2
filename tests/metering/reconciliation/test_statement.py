"""read_statement: the statement's lines as they stream, strictly checked, each refusal naming its line."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from metering.reconciliation.errors import InvalidStatement, StatementTooLarge
from metering.reconciliation.statement import (
    MAX_COST_NANO_USD,
    MAX_LINE_BYTES,
    StatementLine,
    StatementTally,
    read_statement,
)
from tests.metering.reconciliation.world import chunks

HEADER = b"request_id,cost_nano_usd\n"


async def read(body: bytes, *, piece: int = 7, **options: int) -> tuple[list[list[StatementLine]], StatementTally]:
    tally = StatementTally()
    batches = [batch async for batch in read_statement(chunks(body, piece), tally=tally, **options)]
    return batches, tally


async def lines(body: bytes, **options: int) -> list[StatementLine]:
    batches, _ = await read(body, **options)
    return [line for batch in batches for line in batch]


async def refusal(body: bytes, **options: int) -> InvalidStatement:
    with pytest.raises(InvalidStatement) as caught:
        await read(body, **options)
    return caught.value


class TestLines:
    async def test_lines_come_with_their_numbers_and_the_tally_counts_them(self) -> None:
        batches, tally = await read(HEADER + b"a,1\nb,0\nc,9223372036854775806\n", batch_lines=2)
        assert batches == [[("a", 1, 2), ("b", 0, 3)], [("c", 9_223_372_036_854_775_806, 4)]]
        assert (tally.lines, tally.total_nano_usd, tally.bytes_read) == (3, 9_223_372_036_854_775_807, 55)

    @pytest.mark.parametrize(
        "body",
        [
            b"request_id,cost_nano_usd\r\na,1\r\nb,2\r\n",
            b"request_id,cost_nano_usd\na,1\nb,2",
            b"request_id,cost_nano_usd\r\na,1\nb,2\r",
        ],
    )
    async def test_lf_crlf_and_no_last_line_end(self, body: bytes) -> None:
        for piece in (1, 2, 3, 1000):
            assert await lines(body, piece=piece) == [("a", 1, 2), ("b", 2, 3)]

    async def test_a_header_alone_is_an_empty_statement(self) -> None:
        assert await lines(b"request_id,cost_nano_usd") == []
        assert await lines(b"request_id,cost_nano_usd\r\n") == []

    async def test_quoted_request_ids_may_hold_commas_and_quotes(self) -> None:
        body = HEADER + b'"a,b",1\n"say ""hi""",2\n"plain",3\nnon-ascii-\xc3\xa9,4\n'
        assert await lines(body) == [("a,b", 1, 2), ('say "hi"', 2, 3), ("plain", 3, 4), ("non-ascii-é", 4, 5)]

    async def test_a_request_id_of_256_characters_and_the_largest_cost(self) -> None:
        request_id = "é" * 256
        body = HEADER + f"{request_id},{MAX_COST_NANO_USD}\n".encode()
        assert await lines(body) == [(request_id, MAX_COST_NANO_USD, 2)]


class TestRefusals:
    @pytest.mark.parametrize(
        ("header", "shown"),
        [
            (b"request_id,cost\n", "'request_id,cost'"),
            (b"\xef\xbb\xbfrequest_id,cost_nano_usd\n", "'\\ufeffrequest_id,cost_nano_usd'"),
            (b"Request_Id,Cost_Nano_Usd\n", "'Request_Id,Cost_Nano_Usd'"),
            (b"request_id, cost_nano_usd\n", "'request_id, cost_nano_usd'"),
            (b"a,1\n", "'a,1'"),
        ],
    )
    async def test_the_header_must_be_exact(self, header: bytes, shown: str) -> None:
        error = await refusal(header + b"a,1\n")
        assert error.detail == f"line 1: the header must be exactly 'request_id,cost_nano_usd', got {shown}"

    async def test_an_empty_body_has_no_header(self) -> None:
        error = await refusal(b"")
        assert error.detail == "line 1: the statement is empty; its first line must be 'request_id,cost_nano_usd'"

    @pytest.mark.parametrize(
        ("line", "detail"),
        [
            (b"a,1.5", "cost_nano_usd '1.5' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a,1e3", "cost_nano_usd '1e3' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a,-1", "cost_nano_usd '-1' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a,+1", "cost_nano_usd '+1' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a, 1", "cost_nano_usd ' 1' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a,1_000", "cost_nano_usd '1_000' is not a whole, non-negative number of nano-USD (digits only)"),
            ("a,１".encode(), "cost_nano_usd '１' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a,NaN", "cost_nano_usd 'NaN' is not a whole, non-negative number of nano-USD (digits only)"),
            (b"a,", "cost_nano_usd of 'a' is empty"),
            (b"a,9223372036854775808", "cost_nano_usd 9223372036854775808 is larger than 9223372036854775807"),
            (b"a,99999999999999999999999", "cost_nano_usd 99999999999999999999999 is larger than 9223372036854775807"),
            (b",1", "request_id is empty"),
            (b'"",1', "request_id is empty"),
            (("x" * 257 + ",1").encode(), "request_id is longer than 256 characters"),
            (b"a\tb,1", "request_id 'a\\tb' has a character that is not printable"),
            (b"a\x00,1", "request_id 'a\\x00' has a character that is not printable"),
            (b"a", "expected 2 fields (request_id,cost_nano_usd), got 1"),
            (b"a,1,2", "expected 2 fields (request_id,cost_nano_usd), got 3"),
            (b"", "the line is empty"),
            (b"a\xff,1", "the line is not UTF-8 (byte 2)"),
            (b"a\rb,1", "a carriage return inside the line"),
            (b'"a,1', "not a CSV line (unexpected end of data)"),
            (b'a"b",1', "a quote inside an unquoted request_id (quote the field, doubling its quotes)"),
            (b'"a"b,1', "not a CSV line (',' expected after '\"')"),
        ],
    )
    async def test_a_bad_line_is_refused_naming_it(self, line: bytes, detail: str) -> None:
        error = await refusal(HEADER + b"ok,1\n" + line + b"\nlater,2\n")
        assert (error.line, error.detail) == (3, f"line 3: {detail}")

    async def test_the_last_line_without_a_line_end_is_checked_too(self) -> None:
        assert (await refusal(HEADER + b"ok,1\nbad,x")).detail.startswith("line 3: cost_nano_usd 'x'")

    async def test_a_line_too_long_is_refused_before_it_ends(self) -> None:
        body = HEADER + b"ok,1\n" + b"x" * (MAX_LINE_BYTES + 1)
        error = await refusal(body, piece=1000)
        assert error.detail == f"line 3: the line is longer than {MAX_LINE_BYTES} bytes"

    async def test_costs_adding_up_past_a_bigint_are_refused(self) -> None:
        error = await refusal(HEADER + f"a,{MAX_COST_NANO_USD}\nb,1\n".encode())
        assert error.detail == f"line 3: the costs up to this line add up to more than {MAX_COST_NANO_USD} nano-USD"


class TestBounds:
    async def test_more_lines_than_allowed(self) -> None:
        assert len(await lines(HEADER + b"a,1\nb,1\nc,1\n", max_lines=3)) == 3
        for body in (HEADER + b"a,1\nb,1\nc,1\nd,1\n", HEADER + b"a,1\nb,1\nc,1\nd,1"):
            with pytest.raises(StatementTooLarge) as caught:
                await read(body, max_lines=3)
            assert caught.value.detail == "the statement has more than 3 lines after its header"

    async def test_more_bytes_than_allowed(self) -> None:
        body = HEADER + b"a,1\n"
        assert len(await lines(body, max_bytes=len(body))) == 1
        with pytest.raises(StatementTooLarge) as caught:
            await read(body + b"b,1\n", max_bytes=len(body))
        assert caught.value.detail == f"the statement is larger than {len(body)} bytes"

    async def test_memory_holds_one_batch_not_the_statement(self) -> None:
        """The reader hands batches on as it goes: it has yielded the first before the body has ended."""
        sent = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal sent
            yield HEADER
            while True:
                sent += 1
                yield b"".join(b"r-%d-%d,1\n" % (sent, i) for i in range(100))

        reader = read_statement(endless(), tally=StatementTally(), batch_lines=1_000)
        first = await anext(reader)
        await reader.aclose()  # type: ignore[attr-defined]  # an async generator, typed as its iterator
        assert (len(first), sent) == (1_000, 10)
