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
from metering.exports.writers import CSV_FLUSH_BYTES, PARQUET_OPTIONS, PARQUET_ROW_GROUP_ROWS, ChunkSink, arrow_schema

# CSV parsed per block of whole rows; blocks are gathered into row groups of
# PARQUET_ROW_GROUP_ROWS. The block and one row group of Arrow data are the memory bound.
# Half a MiB: a row group rarely ends on a block's last row, and whatever part of a block is
# not yet written stays in memory beside the row group, so a smaller block is a steadier peak
# (``bench/export.py`` prints the peak).
PARQUET_BLOCK_BYTES = 512 * 1024


def _memory_pool() -> pa.MemoryPool:
    """Arrow's default pool — jemalloc, as ``metering.exports`` sets it — with freed pages returned at once.

    Every Arrow allocation of the export is in that one pool: the CSV parser's and the Parquet
    encoders' own buffers go to the process's default pool whatever pool they are given, and
    ``pa.set_memory_pool`` does not change that one. With mimalloc as that default, what it kept
    for reuse grew with the length of the export; with jemalloc the peak stays flat.

    Decay 0 applies to the arenas jemalloc creates from now on, among them the export's worker
    thread's, where all of the Arrow work is done. Kept pages made the peak vary with the
    length; returning them costs page faults, the price of a peak that does not depend on the
    length (``bench/export.py`` prints the peak and the rows per second).
    """
    pool = pa.default_memory_pool()
    if pool.backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(0)
    return pool


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


def _row_end(block: bytes | bytearray, size: int) -> int:
    """Index just past the last complete row in ``block[:size]`` (which starts at a row), 0 if none."""
    end = block.rfind(_NEWLINE, 0, size)
    if end < 0 or block.find(_QUOTE, 0, end) < 0:
        # No quoted cell, so the last newline ends a row. A search stops at the first quote; a
        # count would read the whole block.
        return end + 1
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

    def table(self, block: memoryview) -> pa.Table:
        table = pa_csv.read_csv(
            pa.py_buffer(block),  # type: ignore[arg-type]  # a Buffer is read in place; the stubs list only paths and IO
            read_options=self.read_options,
            parse_options=self.parse_options,
            convert_options=self.convert_options,
            memory_pool=self.pool,
        )
        # Datetime columns arrive as epoch microseconds: the same int64 buffers viewed as
        # timestamp[us, UTC] (a cast would copy every such column once more).
        columns = [
            column
            if column.type == field.type
            else pa.chunked_array([c.view(field.type) for c in column.chunks], field.type)
            for column, field in zip(table.columns, self.schema, strict=True)
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)


class _Block:
    """The bytes gathered for the next parse, in one buffer reused for every block of the export.

    A block joined anew for every parse is a fresh allocation in the interpreter's heap each
    time, and a long export met more of its highs: its peak was higher than with one buffer.
    Arrow copies what it parses, so the buffer can be reused as soon as a parse returns.
    """

    def __init__(self, capacity: int) -> None:
        self.buffer = bytearray(capacity)
        self.size = 0

    def append(self, chunk: bytes) -> None:
        end = self.size + len(chunk)
        if end > len(self.buffer):
            self.buffer.extend(bytes(end - len(self.buffer)))
        self.buffer[self.size : end] = chunk
        self.size = end

    def row_end(self) -> int:
        """Index just past the last complete row gathered, 0 if none."""
        return _row_end(self.buffer, self.size)

    def view(self, end: int) -> memoryview:
        """The first ``end`` bytes, not copied: released before the buffer changes again."""
        return memoryview(self.buffer)[:end]

    def consume(self, end: int) -> None:
        """Keep the partial row after ``end``: it starts the next block."""
        tail = self.size - end
        self.buffer[:tail] = self.buffer[end : self.size]
        self.size = tail


class _RowGroups:
    """Gathers parsed tables into row groups of exactly ``rows`` rows (the last may be shorter).

    Slices are views, so a block's tail waits for the next row group without a copy; at most
    one row group of Arrow data is held at a time.
    """

    def __init__(self, writer: pq.ParquetWriter, rows: int) -> None:
        self.writer = writer
        self.rows = rows
        self.parts: list[pa.Table] = []
        self.gathered = 0

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            taken = min(self.rows - self.gathered, table.num_rows)
            self.parts.append(table.slice(0, taken))
            self.gathered += taken
            table = table.slice(taken)
            if self.gathered == self.rows:
                self.flush()

    def flush(self) -> None:
        if self.parts:
            self.writer.write_table(pa.concat_tables(self.parts), row_group_size=self.rows)
            self.parts.clear()
            self.gathered = 0


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
    # A file-like object is enough (pyarrow's docs and code); its stubs list only paths and IO.
    writer = pq.ParquetWriter(sink, tables.schema, memory_pool=pool, **PARQUET_OPTIONS)  # type: ignore[arg-type]
    groups = _RowGroups(writer, row_group_rows)

    def add(view: memoryview) -> int:
        with view:
            table = tables.table(view)
        groups.add(table)
        return table.num_rows

    # One worker thread: Arrow's allocations stay in one thread's arenas, and blocks keep their order.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-export")
    loop = asyncio.get_running_loop()
    block = _Block(block_bytes)
    try:
        async for chunk in chunks:
            block.append(chunk)
            if block.size < block_bytes:
                continue
            end = block.row_end()
            if end:
                # Off the event loop: the next COPY buffers arrive while Arrow parses and compresses.
                rows = await loop.run_in_executor(worker, add, block.view(end))
                block.consume(end)
                if on_rows is not None:
                    on_rows(rows)
                yield sink.drain()
        if block.size:
            rows = await loop.run_in_executor(worker, add, block.view(block.size))
            if on_rows is not None:
                on_rows(rows)
        await loop.run_in_executor(worker, groups.flush)
    finally:
        writer.close()
        worker.shutdown(wait=False)
    yield sink.drain()
