"""The archive's files: one Parquet file per table and month, and the month's ``manifest.json``, written last.

Every file is written under a temporary name, flushed to disk (fsync), renamed into place and
its directory flushed, so a file under its final name is always complete; the manifest,
renamed last, says the month's files are all there. The figures (rows, sums, sha256) of a
file are read back from disk, never taken from what was meant to be written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, LargeBinary, Table, TypeDecorator
from sqlalchemy.types import TypeEngine

from metering.exports.writers import PARQUET_OPTIONS

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
ROWS_PER_GROUP = 65_536
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Sum:
    """A sum a file is checked by: of ``column``, or of its positive values only (a ledger's debits)."""

    name: str
    column: str
    positive_only: bool = False


@dataclass(frozen=True, slots=True)
class Figures:
    """What a table's rows of a month add up to: in the database, or in a file read back."""

    rows: int
    sums: dict[str, int]


def _arrow_type(column_type: TypeEngine[Any]) -> pa.DataType:
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    if isinstance(column_type, BigInteger | Integer):
        return pa.int64()
    if isinstance(column_type, Boolean):
        return pa.bool_()
    if isinstance(column_type, DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(column_type, LargeBinary):
        return pa.binary()
    return pa.string()  # strings, and JSON as its text


def arrow_schema(table: Table) -> pa.Schema:
    """The Parquet schema of ``table``'s rows: its columns, in order, with their nullability."""
    return pa.schema([pa.field(c.name, _arrow_type(c.type), nullable=bool(c.nullable)) for c in table.columns])


def _json_columns(table: Table) -> list[int]:
    return [index for index, column in enumerate(table.columns) if isinstance(column.type, JSON)]


async def write_parquet(
    path: Path, table: Table, batches: AsyncIterator[Sequence[Sequence[Any]]], *, on_rows: Any = None
) -> int:
    """Write ``table``'s rows, batch by batch (each a row group), to ``path``; returns the rows written.

    The file is complete under ``path`` or absent: written as ``.<name>.partial``, fsynced, renamed.
    """
    schema = arrow_schema(table)
    json_columns = _json_columns(table)
    partial = path.with_name(f".{path.name}.partial")
    rows = 0
    try:
        with pq.ParquetWriter(partial, schema, **PARQUET_OPTIONS) as writer:
            async for batch in batches:
                if not batch:
                    continue
                columns = [list(values) for values in zip(*batch, strict=True)]
                for index in json_columns:
                    columns[index] = [None if v is None else json.dumps(v, sort_keys=True) for v in columns[index]]
                arrays = [pa.array(values, type=f.type) for values, f in zip(columns, schema, strict=True)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=ROWS_PER_GROUP)
                rows += len(batch)
                if on_rows is not None:
                    on_rows(len(batch))
        _fsync_file(partial)
        partial.replace(path)
        fsync_directory(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return rows


def read_figures(path: Path, sums: Sequence[Sum]) -> Figures:
    """Rows and sums of a Parquet file, read back from disk (every row group)."""
    parquet = pq.ParquetFile(path)
    rows = 0
    totals = {s.name: 0 for s in sums}
    columns = sorted({s.column for s in sums})
    for batch in parquet.iter_batches(columns=columns or None, batch_size=ROWS_PER_GROUP):
        rows += batch.num_rows
        for s in sums:
            values = batch.column(s.column)
            if s.positive_only:
                values = pc.filter(values, pc.greater(values, pa.scalar(0, values.type)))
            # Summed per batch in Arrow (int64, far from its limits in one batch), then in Python ints.
            total = pc.sum(values).as_py()
            totals[s.name] += int(total or 0)
    if not columns:
        rows = parquet.metadata.num_rows
    return Figures(rows, totals)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> str:
    """``manifest.json`` of a month, complete or absent (temporary name, fsync, rename); returns its sha256."""
    path = directory / MANIFEST
    partial = directory / f".{MANIFEST}.partial"
    partial.write_bytes(json.dumps({"version": MANIFEST_VERSION, **manifest}, indent=2, sort_keys=True).encode())
    _fsync_file(partial)
    partial.replace(path)
    fsync_directory(directory)
    return sha256_of(path)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename is durable once its directory is)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
