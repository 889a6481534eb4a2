"""Report writers: CSV (RFC 4180, formula-injection safe), JSON Lines and Parquet, chunk by chunk.

Each writer takes the report's columns and an async iterator of row batches and yields
bytes; it holds at most one batch (Parquet: one row group) in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from metering.exports.reports import Column

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# A spreadsheet treats a text cell starting with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_FLUSH_BYTES = 256 * 1024
PARQUET_ROW_GROUP_ROWS = 65_536


# Parquet's options for every export: zstd over plain pages, no dictionary pages. The report
# columns are mostly near-unique (ids, keys, amounts, times), so a dictionary filled up to its
# page limit and fell back to plain in every row group of those columns: files several times
# larger, and higher memory peaks while it fell back.
class ParquetOptions(TypedDict):
    compression: Literal["zstd"]
    use_dictionary: bool


PARQUET_OPTIONS: ParquetOptions = {"compression": "zstd", "use_dictionary": False}
_ARROW_TYPES = {"int": pa.int64(), "str": pa.string(), "datetime": pa.timestamp("us", tz="UTC")}


def csv_cell(value: object) -> object:
    """A cell as CSV text; text that a spreadsheet would run as a formula gets a leading ``'``.

    Integers (amounts may be negative) are numbers, not text, and are written as they are.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return _rfc3339(value)
    return _csv_text(str(value))


def _rfc3339(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _csv_text(value: str | None) -> str | None:
    if value is None or not value.startswith(FORMULA_PREFIXES):
        return value
    return "'" + value


def _csv_datetime(value: datetime | None) -> str | None:
    return None if value is None else _rfc3339(value)


# Per column type: how a cell becomes CSV (None = as it is; csv writes None as an empty cell).
_CSV_CONVERTERS = {"int": None, "str": _csv_text, "datetime": _csv_datetime}


async def write_csv(columns: Sequence[Column], batches: AsyncIterator[list[tuple[Any, ...]]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([csv_cell(column.name) for column in columns])
    converters = [_CSV_CONVERTERS[column.type] for column in columns]
    async for batch in batches:
        if not batch:
            continue
        # Column at a time: one map per column instead of a type dispatch per cell.
        cells = [
            col if convert is None else map(convert, col)
            for convert, col in zip(converters, zip(*batch, strict=True), strict=True)
        ]
        writer.writerows(zip(*cells, strict=True))
        if buffer.tell() >= CSV_FLUSH_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _json_default(value: object) -> object:
    raise TypeError(f"cannot export {type(value).__name__}")


async def write_jsonl(columns: Sequence[Column], batches: AsyncIterator[list[tuple[Any, ...]]]) -> AsyncIterator[bytes]:
    names = [column.name for column in columns]
    async for batch in batches:
        lines = []
        for row in batch:
            record = {
                name: (_rfc3339(value) if isinstance(value, datetime) else value)
                for name, value in zip(names, row, strict=True)
            }
            lines.append(orjson.dumps(record, default=_json_default))
        if lines:
            yield b"\n".join(lines) + b"\n"


class ChunkSink(io.RawIOBase):
    """A write-only file that keeps what was written until ``drain``: Parquet into a stream."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(column.name, _ARROW_TYPES[column.type]) for column in columns])


def _table(schema: pa.Schema, rows: list[tuple[Any, ...]]) -> pa.Table:
    arrays = [pa.array([row[index] for row in rows], type=field.type) for index, field in enumerate(schema)]
    return pa.Table.from_arrays(arrays, schema=schema)


async def write_parquet(
    columns: Sequence[Column],
    batches: AsyncIterator[list[tuple[Any, ...]]],
    *,
    row_group_rows: int = PARQUET_ROW_GROUP_ROWS,
) -> AsyncIterator[bytes]:
    schema = arrow_schema(columns)
    sink = ChunkSink()
    # A file-like object is enough (pyarrow's docs and code); its stubs list only paths and IO.
    writer = pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS)  # type: ignore[arg-type]
    pending: list[tuple[Any, ...]] = []
    try:
        async for batch in batches:
            pending.extend(batch)
            while len(pending) >= row_group_rows:
                writer.write_table(_table(schema, pending[:row_group_rows]))
                del pending[:row_group_rows]
                yield sink.drain()
        if pending:
            writer.write_table(_table(schema, pending))
    finally:
        writer.close()
    yield sink.drain()


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}
