"""Writers fed by PostgreSQL's COPY CSV stream (``metering.exports.copy_repository``) instead of rows.

Both keep what ``metering.exports.writers`` promises — the same bytes for CSV, the same
table for Parquet, at most one block in memory — without a Python object per cell.
A COPY CSV row ends at a newline outside quotes; inside quotes a ``"`` is doubled, so the
parity of the quotes seen so far says whether a newline ends a row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from metering.exports.reports import Column
from metering.exports.writers import CSV_FLUSH_BYTES, PARQUET_ROW_GROUP_ROWS, ChunkSink, arrow_schema

# CSV parsed per block of whole rows; blocks are gathered into row groups of
# PARQUET_ROW_GROUP_ROWS. The block and one row group of Arrow data are the memory bound.
PARQUET_BLOCK_BYTES = 2 * 1024 * 1024


def _memory_pool() -> pa.MemoryPool:
    """jemalloc hands freed blocks back to the system; the default mimalloc pool kept tens of MB more."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow build without jemalloc
        return pa.system_memory_pool()
_QUOTE = b'"'
_NEWLINE = b"\n"


class CrlfRows:
    """COPY ends rows with LF, ``csv.writer`` with CRLF: rewrite the row ends, not LFs inside quoted cells."""

    def __init__(self) -> None:
        self.inside_quotes = False

    def convert(self, chunk: bytes) -> tuple[bytes, int]:
        """(the chunk with CRLF row ends, how many rows it ended)."""
        if not self.inside_quotes and _QUOTE not in chunk:
            return chunk.replace(_NEWLINE, b"\r\n"), chunk.count(_NEWLINE)
        parts = chunk.split(_QUOTE)
        outside = 1 if self.inside_quotes else 0  # parity of the parts that lie outside quotes
        rows = 0
        for index in range(outside, len(parts), 2):
            rows += parts[index].count(_NEWLINE)
            parts[index] = parts[index].replace(_NEWLINE, b"\r\n")
        self.inside_quotes ^= (len(parts) - 1) % 2 == 1
        return _QUOTE.join(parts), rows


async def write_csv_from_copy(
    chunks: AsyncIterator[bytes], *, on_rows: Callable[[int], None] | None = None
) -> AsyncIterator[bytes]:
    """COPY CSV with a header line → the CSV writer's bytes; ``on_rows`` hears the data rows."""
    rows_to_skip = 1  # the header line is not a report row
    crlf = CrlfRows()
    pending: list[bytes] = []
    size = 0
    async for chunk in chunks:
        converted, rows = crlf.convert(chunk)
        if rows_to_skip and rows:
            rows, rows_to_skip = rows - 1, 0
        if on_rows is not None and rows:
            on_rows(rows)
        pending.append(converted)
        size += len(converted)
        if size >= CSV_FLUSH_BYTES:
            yield b"".join(pending)
            pending.clear()
            size = 0
    yield b"".join(pending)


def _row_end(block: bytearray) -> int:
    """Index just past the last complete row in ``block`` (which starts at a row), 0 if none."""
    end = block.rfind(_NEWLINE)
    while end >= 0 and block.count(_QUOTE, 0, end) % 2:
        end = block.rfind(_NEWLINE, 0, end)
    return end + 1


class _CsvTables:
    """Parses COPY CSV blocks of the ``arrow`` shape into tables of the report's schema."""

    def __init__(self, columns: Sequence[Column], pool: pa.MemoryPool) -> None:
        self.schema = arrow_schema(columns)
        self.pool = pool
        names = [column.name for column in columns]
        read_types = {c.name: pa.int64() if c.type in ("int", "datetime") else pa.string() for c in columns}
        self.read_options = pa_csv.ReadOptions(column_names=names, use_threads=False)
        self.parse_options = pa_csv.ParseOptions(newlines_in_values=True)
        # COPY writes NULL as an empty cell and an empty string as "" — keep them apart.
        self.convert_options = pa_csv.ConvertOptions(
            column_types=read_types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
        )

    def table(self, block: bytes) -> pa.Table:
        table = pa_csv.read_csv(
            pa.py_buffer(block),
            read_options=self.read_options,
            parse_options=self.parse_options,
            convert_options=self.convert_options,
            memory_pool=self.pool,
        )
        return table.cast(self.schema)  # datetime columns: epoch microseconds → timestamp[us, UTC]


async def write_parquet_from_copy(
    columns: Sequence[Column],
    chunks: AsyncIterator[bytes],
    *,
    on_rows: Callable[[int], None] | None = None,
    block_bytes: int = PARQUET_BLOCK_BYTES,
    row_group_rows: int = PARQUET_ROW_GROUP_ROWS,
) -> AsyncIterator[bytes]:
    """COPY CSV (no header) → Parquet, one block of whole rows at a time, parsed column-wise by Arrow."""
    pool = _memory_pool()
    tables = _CsvTables(columns, pool)
    sink = ChunkSink()
    writer = pq.ParquetWriter(sink, tables.schema, compression="zstd", memory_pool=pool)
    group: list[pa.Table] = []

    def flush() -> None:
        if group:
            writer.write_table(pa.concat_tables(group), row_group_size=row_group_rows)
            group.clear()

    def add(block: bytes) -> int:
        """Parse one block; write the gathered tables as a row group once it is full."""
        table = tables.table(block)
        group.append(table)
        if sum(part.num_rows for part in group) >= row_group_rows:
            flush()
        return table.num_rows

    # One worker thread: Arrow's allocations stay in one thread's arenas, and blocks keep their order.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-export")
    loop = asyncio.get_running_loop()
    pending = bytearray()
    try:
        async for chunk in chunks:
            pending += chunk
            if len(pending) < block_bytes:
                continue
            end = _row_end(pending)
            if end:
                block = bytes(pending[:end])
                del pending[:end]
                # Off the event loop: the next COPY buffers arrive while Arrow parses and compresses.
                rows = await loop.run_in_executor(worker, add, block)
                if on_rows is not None:
                    on_rows(rows)
                yield sink.drain()
        if pending:
            rows = await loop.run_in_executor(worker, add, bytes(pending))
            if on_rows is not None:
                on_rows(rows)
        await loop.run_in_executor(worker, flush)
    finally:
        writer.close()
        worker.shutdown(wait=False)
    yield sink.drain()
