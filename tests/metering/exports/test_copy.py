"""PostgreSQL's COPY path of the exports gives what the row path gives: the same CSV bytes, the same Parquet table."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from metering.db import Database
from metering.exports.copy_repository import copy_query, copy_repository
from metering.exports.copy_writers import CrlfRows, _row_end, write_csv_from_copy, write_parquet_from_copy
from metering.exports.reports import REPORTS
from metering.exports.repository import export_repository
from metering.exports.service import export_service
from metering.exports.writers import WRITERS
from metering.models import LedgerTransaction
from tests.factories.billing_data import cost_posting, grant_posting, insert_usage, post, seed_world

PERIOD = "2026-10"
# Every cell a spreadsheet or a CSV parser treats specially, and text COPY quotes differently.
NASTY = [
    "",
    "=1+2",
    "+x",
    "-5",
    "@a",
    "\tx",
    "\rx",
    "a,b",
    'q"uote',
    '"',
    "line\nbreak",
    "cr\rin",
    "crlf\r\nin",
    "ünïcødé",
    " lead",
    "'already",
    "\\.",
    "=",
    "plain",
]


# Rows of short cells with the characters that decide where a CSV row ends: quotes, commas, newlines.
CSV_ROWS = st.lists(st.lists(st.text(alphabet='ab,"\n x', max_size=6), min_size=1, max_size=4), max_size=6)


@pytest.fixture
async def nasty_world(db: Database) -> None:
    """Ledger and unpriced rows whose text holds every special case; one timestamp on a whole second."""
    if db.dialect != "postgresql":
        pytest.skip("COPY is PostgreSQL's; SQLite always takes the row path")
    await seed_world(db)
    postings = [grant_posting("acme", PERIOD, 4_000_000_000)]
    postings += [
        cost_posting(f"{text}#{index}", PERIOD, account="acme", provider="together", credits=index + 1, memo=text)
        for index, text in enumerate(NASTY)
    ]
    postings.append(cost_posting("no-memo", PERIOD, account="erin", provider="fireworks-ai", payg=7))
    await post(db, *postings)
    async with db.session_scope() as session:
        await session.execute(
            update(LedgerTransaction)
            .where(LedgerTransaction.idempotency_key == "no-memo")
            .values(created_at=datetime(2026, 10, 5, 12, 0, tzinfo=UTC))
        )
    await insert_usage(
        db,
        [
            {
                "request_id": text or "empty",
                "user": "bob",
                "billing_account": "acme",
                "model": text,
                "started_at": datetime(2026, 10, 9, 1, 2, 3, index * 1000, tzinfo=UTC),
                "status": "unpriced",
            }
            for index, text in enumerate(NASTY)
        ],
    )


async def _row_path(db: Database, report: str, fmt: str) -> bytes:
    batches = export_repository.batches(db, report=report, period=PERIOD, batch_rows=7)
    return b"".join([chunk async for chunk in WRITERS[fmt](REPORTS[report].columns, batches)])


async def _service(db: Database, report: str, fmt: str, seen: list[int] | None = None) -> bytes:
    on_rows = None if seen is None else seen.append
    return b"".join(
        [c async for c in export_service.stream_report(db, report=report, period=PERIOD, fmt=fmt, on_rows=on_rows)]
    )


async def _copy_in_pieces(db: Database, report: str, *, shape: str, header: bool, piece: int) -> AsyncIterator[bytes]:
    """The COPY stream cut into tiny pieces, so quotes and row ends fall across chunk boundaries."""
    query = copy_query(report, PERIOD, REPORTS[report].columns, shape=shape)
    async for chunk in copy_repository.copy_chunks(db, query=query, header=header):
        for start in range(0, len(chunk), piece):
            yield chunk[start : start + piece]


@pytest.mark.parametrize("report", ["ledger", "unpriced", "provider-payables", "receivables", "credits"])
class TestSameOutputAsTheRowPath:
    async def test_csv_bytes_are_identical(self, db: Database, nasty_world: None, report: str) -> None:
        seen: list[int] = []
        body = await _service(db, report, "csv", seen)
        assert body == await _row_path(db, report, "csv")
        assert sum(seen) == len(list(csv.reader(io.StringIO(body.decode(), newline="")))) - 1

    async def test_parquet_tables_are_equal(self, db: Database, nasty_world: None, report: str) -> None:
        seen: list[int] = []
        table = pq.read_table(io.BytesIO(await _service(db, report, "parquet", seen)))
        expected = pq.read_table(io.BytesIO(await _row_path(db, report, "parquet")))
        assert table.schema == expected.schema
        assert table.to_pylist() == expected.to_pylist()
        assert sum(seen) == table.num_rows


class TestChunkBoundaries:
    async def test_csv_from_tiny_pieces(self, db: Database, nasty_world: None) -> None:
        pieces = _copy_in_pieces(db, "ledger", shape="csv", header=True, piece=3)
        body = b"".join([chunk async for chunk in write_csv_from_copy(pieces)])
        assert body == await _row_path(db, "ledger", "csv")

    async def test_parquet_from_tiny_blocks(self, db: Database, nasty_world: None) -> None:
        pieces = _copy_in_pieces(db, "unpriced", shape="arrow", header=False, piece=5)
        writer = write_parquet_from_copy(REPORTS["unpriced"].columns, pieces, block_bytes=64, row_group_rows=4)
        parquet = pq.ParquetFile(io.BytesIO(b"".join([chunk async for chunk in writer])))
        expected = pq.read_table(io.BytesIO(await _row_path(db, "unpriced", "parquet")))
        assert parquet.num_row_groups > 1
        assert parquet.read().to_pylist() == expected.to_pylist() and expected.num_rows == len(NASTY)

    async def test_parquet_row_groups_are_full_whatever_the_blocks(self, db: Database, nasty_world: None) -> None:
        # Blocks of a few rows each: rows carry over between blocks until a row group is full.
        pieces = _copy_in_pieces(db, "unpriced", shape="arrow", header=False, piece=7)
        writer = write_parquet_from_copy(REPORTS["unpriced"].columns, pieces, block_bytes=150, row_group_rows=4)
        parquet = pq.ParquetFile(io.BytesIO(b"".join([chunk async for chunk in writer])))
        sizes = [parquet.metadata.row_group(index).num_rows for index in range(parquet.num_row_groups)]
        assert sizes == [4, 4, 4, 4, 3] and len(NASTY) == 19


class TestCrlfRows:
    @settings(max_examples=200, deadline=None)
    @given(rows=CSV_ROWS, cut=st.integers(min_value=1, max_value=9))
    def test_row_ends_become_crlf_and_cells_keep_their_lf(self, rows: list[list[str]], cut: int) -> None:
        lf, crlf = io.StringIO(), io.StringIO()
        csv.writer(lf, lineterminator="\n").writerows(rows)
        csv.writer(crlf, lineterminator="\r\n").writerows(rows)
        data = lf.getvalue().encode()
        converter = CrlfRows()
        converted = [converter.convert(data[start : start + cut]) for start in range(0, len(data), cut)]
        assert b"".join(chunk for chunk, _ in converted) == crlf.getvalue().encode()
        assert sum(rows_ended for _, rows_ended in converted) == len(rows)


class TestRowEnd:
    @settings(max_examples=300, deadline=None)
    @given(rows=CSV_ROWS, size=st.integers(min_value=0, max_value=80))
    def test_a_block_is_cut_after_its_last_whole_row(self, rows: list[list[str]], size: int) -> None:
        """With or without quoted cells (newlines inside quotes do not end a row), and with room to spare."""
        ends, text = [0], io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for row in rows:
            writer.writerow(row)
            ends.append(len(text.getvalue().encode()))
        data = text.getvalue().encode()
        size = min(size, len(data))
        block = bytearray(data[:size] + b'"\nspare"')  # bytes past ``size`` are not looked at
        assert _row_end(block, size) == max(end for end in ends if end <= size)


class TestArrowAllocator:
    """The export package picks Arrow's process-wide allocator before pyarrow is first used."""

    @staticmethod
    def _backend_after_import(**env: str) -> str:
        clean = {key: value for key, value in os.environ.items() if key != "ARROW_DEFAULT_MEMORY_POOL"}
        script = "import metering.exports.copy_writers, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
        result = subprocess.run([sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def test_jemalloc_is_the_default_pool_where_the_build_has_it(self) -> None:
        try:
            pa.jemalloc_memory_pool()
        except NotImplementedError:
            pytest.skip("this pyarrow build has no jemalloc")
        assert self._backend_after_import() == "jemalloc"

    def test_an_allocator_chosen_in_the_environment_is_kept(self) -> None:
        assert self._backend_after_import(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
