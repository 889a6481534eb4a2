"""PostgreSQL only: a report's rows as the server's own ``COPY … TO STDOUT (FORMAT csv)`` stream.

Formatting a million rows is the server's work here (C, on its own core), not per-cell
Python. Two shapes of the same report query:

- ``csv``: cells already as the CSV writer in ``metering.exports.writers`` writes them —
  formula-prefixed text gets a leading ``'``, an empty text becomes an unquoted empty cell,
  timestamps are RFC 3339 UTC — so the bytes equal that writer's once line ends are CRLF;
- ``arrow``: raw text and timestamps as integer microseconds since the epoch, for a
  column-wise reader (``metering.exports.copy_writers.write_parquet_from_copy``).

An own-transaction entry point (the streamed export): ``copy_chunks`` opens the one snapshot
the server's COPY runs in, since it is read while it streams, after the request has returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, case, cast, extract, func, literal, null
from sqlalchemy.dialects import postgresql

from metering.db import Database
from metering.exports.reports import Column
from metering.exports.repository import FINISHERS, STATEMENTS
from metering.exports.writers import FORMULA_PREFIXES

# A few COPY buffers (asyncpg hands over one per network read, up to 256 KiB) in flight at most.
# Beyond them the server waits on the socket, whose buffer is the kernel's, not this process's.
# How full the queue stood depended on how far the server ran ahead: a shorter queue gives a lower
# peak in the same time (``bench/export.py`` prints both).
QUEUE_CHUNKS = 4
_FORMULA_CODES = tuple(ord(prefix) for prefix in FORMULA_PREFIXES)
_NO_FRACTION = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
_WITH_FRACTION = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_DONE = object()


def supports_copy(report: str) -> bool:
    """Reports whose SQL rows are the output rows (drift is finished in Python)."""
    return report in STATEMENTS and report not in FINISHERS


def _csv_text(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """``'`` before a formula; '' as NULL, because COPY quotes an empty string and csv.writer does not."""
    code = func.ascii(value)
    # Nearly every cell starts with a letter or digit: one comparison, then the cell as it is.
    return case(
        (code >= 65, value),
        (code.in_(_FORMULA_CODES), literal("'", String) + value),
        (value == "", null()),
        else_=value,
    )


def _csv_datetime(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """RFC 3339 in UTC as ``datetime.isoformat`` writes it: microseconds only when there are any."""
    utc = func.timezone("UTC", value)
    return case(
        (func.date_trunc("second", utc) == utc, func.to_char(utc, _NO_FRACTION)),
        else_=func.to_char(utc, _WITH_FRACTION),
    )


def _epoch_micros(value: ColumnElement[Any]) -> ColumnElement[Any]:
    return cast(extract("epoch", value) * 1_000_000, postgresql.BIGINT)


_SHAPES: dict[str, dict[str, Callable[[ColumnElement[Any]], ColumnElement[Any]] | None]] = {
    "csv": {"int": None, "str": _csv_text, "datetime": _csv_datetime},
    "arrow": {"int": None, "str": None, "datetime": _epoch_micros},
}


def copy_query(report: str, period: str, columns: Sequence[Column], *, shape: str) -> str:
    """The report's SELECT with its cells shaped server-side, in the report's order, as literal SQL."""
    statement, key = STATEMENTS[report](period)
    if key is not None:
        statement = statement.order_by(key)
    shapers = _SHAPES[shape]
    shaped = []
    for column, expression in zip(columns, statement.selected_columns, strict=True):
        shaper = shapers[column.type]
        shaped.append((expression if shaper is None else shaper(expression)).label(column.name))
    statement = statement.with_only_columns(*shaped, maintain_column_froms=True)
    # Literal binds: COPY takes no parameters; the values are a validated period and fixed codes.
    # (SQLAlchemy leaves ``postgresql.dialect``, its default driver's dialect class, untyped.)
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


class CopyRepository:
    async def copy_chunks(self, db: Database, *, query: str, header: bool) -> AsyncIterator[bytes]:
        """The CSV bytes of ``query`` as the server sends them, through a bounded queue (constant memory).

        One transaction, so the report is one snapshot; JIT is off (its compile costs more than
        it saves on a plain scan) and the sort by id gets memory on the server instead of disk.
        """
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=QUEUE_CHUNKS)

        async def produce() -> None:
            try:
                async with db.session_scope() as session:
                    connection = await session.connection()
                    await connection.exec_driver_sql("SET LOCAL jit = off")
                    await connection.exec_driver_sql("SET LOCAL work_mem = '64MB'")
                    raw = (await connection.get_raw_connection()).driver_connection
                    if raw is None:
                        raise RuntimeError("the export's connection is closed")
                    await raw.copy_from_query(query, output=queue.put, format="csv", header=header)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                await queue.put(exc)
                return
            await queue.put(_DONE)

        task = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


copy_repository = CopyRepository()
