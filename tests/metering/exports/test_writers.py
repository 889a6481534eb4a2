"""The report writers: CSV is RFC 4180 and formula-safe, Parquet keeps row groups bounded, JSON Lines is exact."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.exports.reports import Column
from metering.exports.writers import FORMULA_PREFIXES, csv_cell, write_csv, write_jsonl, write_parquet

COLUMNS = (Column("id", "int"), Column("note", "str"), Column("amount_nano_usd", "int"), Column("at", "datetime"))
AT = datetime(2026, 10, 5, 12, 30, tzinfo=UTC)


async def _batches(rows: list[tuple], size: int) -> AsyncIterator[list[tuple]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _collect(writer, rows: list[tuple], size: int = 3, **kwargs) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in writer(COLUMNS, _batches(rows, size), **kwargs)])

    return asyncio.run(run())


class TestCsv:
    @settings(max_examples=200, deadline=None)
    @given(notes=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=8))
    def test_round_trips_and_defuses_formulas(self, notes: list[str]) -> None:
        rows = [(index, note, -index * 1_000_000_007, AT) for index, note in enumerate(notes)]
        parsed = list(csv.reader(io.StringIO(_collect(write_csv, rows).decode(), newline="")))

        assert parsed[0] == ["id", "note", "amount_nano_usd", "at"]
        for (index, note, amount, _), cells in zip(rows, parsed[1:], strict=True):
            expected = "'" + note if note.startswith(FORMULA_PREFIXES) else note
            assert cells == [str(index), expected, str(amount), "2026-10-05T12:30:00Z"]

    def test_lines_end_in_crlf_and_special_cells_are_quoted(self) -> None:
        body = _collect(write_csv, [(1, 'a,"b"\nc', 5, AT), (2, None, 0, AT)])
        assert body == (
            b'id,note,amount_nano_usd,at\r\n1,"a,""b""\nc",5,2026-10-05T12:30:00Z\r\n2,,0,2026-10-05T12:30:00Z\r\n'
        )

    def test_each_formula_prefix(self) -> None:
        assert [csv_cell(p + "1") for p in ("=", "+", "-", "@", "\t", "\r")] == [
            "'=1",
            "'+1",
            "'-1",
            "'@1",
            "'\t1",
            "'\r1",
        ]
        assert (csv_cell(-5), csv_cell("a=b"), csv_cell(True)) == (-5, "a=b", "true")


class TestJsonl:
    def test_one_object_per_line_with_exact_integers(self) -> None:
        big = 2**63 - 1
        lines = _collect(write_jsonl, [(1, "x", big, AT), (2, None, -1, AT)]).splitlines()
        assert [orjson.loads(line) for line in lines] == [
            {"id": 1, "note": "x", "amount_nano_usd": big, "at": "2026-10-05T12:30:00Z"},
            {"id": 2, "note": None, "amount_nano_usd": -1, "at": "2026-10-05T12:30:00Z"},
        ]


class TestParquet:
    def test_row_groups_are_bounded_and_values_exact(self) -> None:
        rows = [(i, f"n{i}", i * 1_000_000_007, AT + timedelta(seconds=i)) for i in range(25)]
        body = _collect(write_parquet, rows, size=4, row_group_rows=10)
        parquet = pq.ParquetFile(io.BytesIO(body))
        assert [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)] == [10, 10, 5]
        assert parquet.read().to_pylist() == [
            {"id": i, "note": n, "amount_nano_usd": a, "at": t} for i, n, a, t in rows
        ]

    def test_an_empty_report_is_a_valid_file_with_the_schema(self) -> None:
        table = pq.read_table(io.BytesIO(_collect(write_parquet, [])))
        assert (table.num_rows, table.column_names) == (0, ["id", "note", "amount_nano_usd", "at"])
