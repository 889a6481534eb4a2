"""The router's durable on-disk queue of usage records: a SQLite file in WAL mode with a dead-letter table.

Durability, stated exactly. Every ``append`` is its own committed SQLite transaction; there is no
in-memory buffering (a one-row WAL commit is already well within the hook's budget, measured in
``bench/``, so group commit would only weaken the guarantee; ``append_many`` commits a block at once for
callers that have one). When ``append`` returns:

- ``synchronous="NORMAL"`` (the default): the record has been written to the WAL file with
  ``write(2)``, so it survives the router process being killed (``kill -9``, OOM, crash) — the
  kernel holds the bytes. It is NOT guaranteed to survive a power cut or kernel crash before the
  next checkpoint/fsync: the last transactions may then roll back (the file stays consistent).
- ``synchronous="FULL"``: the WAL is fsynced at every commit, so the record also survives power
  loss, at the price of one fsync per record (see ``bench/hook_enqueue.py`` for both costs).

Rows are delivered in ``id`` order (AUTOINCREMENT: ids are never reused, so a sender's in-flight
ids can never come to name a newer record). Many threads or processes may append to one file;
one sender per file is expected (two would only cause duplicates, which the service absorbs).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body BLOB NOT NULL,
        enqueued_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body BLOB NOT NULL,
        reason TEXT NOT NULL,
        enqueued_at REAL NOT NULL,
        failed_at REAL NOT NULL)""",
)
# Deleting ids in chunks keeps each statement under SQLite's bound-parameter limit.
_CHUNK = 500
# Compact, ASCII-only JSON: a string the service must refuse (a lone surrogate, say) is still
# spooled, and reaches the dead-letter table with the service's reason.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _dumps(record: dict[str, Any]) -> bytes:
    return _encode(record).encode("ascii")


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One record waiting for delivery; ``body`` is its JSON exactly as it will be sent."""

    id: int
    body: bytes
    enqueued_at: float

    @property
    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.body)
        return record


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that will not be delivered without an operator: the service refused it, or it had no id."""

    id: int
    record: dict[str, Any]
    reason: str
    enqueued_at: float
    failed_at: float


class Spool:
    """A durable FIFO of usage records in one SQLite file; safe to share between threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit: each append is one transaction; multi-statement changes use _transaction().
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA journal_size_limit=67108864")
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
        self._closed = False

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # -- producer side --------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> int:
        """Store one record durably (see the module docstring for exactly how); returns its id."""
        body = _dumps(record)
        with self._lock:
            cursor = self._db.execute("INSERT INTO spool (body, enqueued_at) VALUES (?, ?)", (body, time.time()))
            return cursor.lastrowid  # type: ignore[return-value]

    def append_many(self, records: Iterable[dict[str, Any]]) -> int:
        """Store several records in one transaction (one commit, so cheaper per record); returns the count."""
        now = time.time()
        rows = [(_dumps(record), now) for record in records]
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO spool (body, enqueued_at) VALUES (?, ?)", rows)
        return len(rows)

    def add_dead_letter(self, record: dict[str, Any], reason: str) -> int:
        """Keep a record that can never be delivered (e.g. no request id) where an operator will see it."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO dead_letters (body, reason, enqueued_at, failed_at) VALUES (?, ?, ?, ?)",
                (_dumps(record), reason, now, now),
            )
            return cursor.lastrowid  # type: ignore[return-value]

    # -- consumer side --------------------------------------------------------------------------

    def peek(self, limit: int) -> list[SpooledRecord]:
        """The oldest ``limit`` records, oldest first, left in place until ``settle``/``delete``."""
        with self._lock:
            rows = self._db.execute("SELECT id, body, enqueued_at FROM spool ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [SpooledRecord(id=row[0], body=row[1], enqueued_at=row[2]) for row in rows]

    def delete(self, ids: Iterable[int]) -> None:
        """Forget delivered records."""
        self.settle(delivered=ids)

    def dead_letter(self, rejected: Iterable[tuple[int, str]]) -> None:
        """Move spooled records to the dead-letter table, each with its reason."""
        self.settle(rejected=rejected)

    def settle(self, *, delivered: Iterable[int] = (), rejected: Iterable[tuple[int, str]] = ()) -> None:
        """Delete ``delivered`` and dead-letter ``rejected`` (id, reason) pairs in one transaction."""
        delivered = list(delivered)
        rejected = list(rejected)
        now = time.time()
        with self._lock, self._transaction():
            if rejected:
                self._db.executemany(
                    "INSERT INTO dead_letters (body, reason, enqueued_at, failed_at) "
                    "SELECT body, ?, enqueued_at, ? FROM spool WHERE id = ?",
                    [(reason, now, spool_id) for spool_id, reason in rejected],
                )
            for chunk in _chunks(delivered + [spool_id for spool_id, _ in rejected], _CHUNK):
                placeholders = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM spool WHERE id IN ({placeholders})", chunk)

    # -- inspection and repair ------------------------------------------------------------------

    def pending_count(self) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT count(*) FROM spool").fetchone()[0]
            return count

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest waiting record was spooled (epoch seconds), for a backlog-age gauge."""
        with self._lock:
            oldest: float | None = self._db.execute("SELECT min(enqueued_at) FROM spool").fetchone()[0]
            return oldest

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body, reason, enqueued_at, failed_at FROM dead_letters ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [
            DeadLetter(id=row[0], record=json.loads(row[1]), reason=row[2], enqueued_at=row[3], failed_at=row[4])
            for row in rows
        ]

    def dead_letter_count(self) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            return count

    def requeue_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters back in the spool (after the cause was fixed); all of them when ``ids`` is None."""
        with self._lock, self._transaction():
            if ids is None:
                selected = [row[0] for row in self._db.execute("SELECT id FROM dead_letters ORDER BY id")]
            else:
                selected = list(ids)
            moved = 0
            for chunk in _chunks(selected, _CHUNK):
                placeholders = ",".join("?" * len(chunk))
                self._db.execute(
                    "INSERT INTO spool (body, enqueued_at) SELECT body, enqueued_at FROM dead_letters "
                    f"WHERE id IN ({placeholders}) ORDER BY id",
                    chunk,
                )
                moved += self._db.execute(f"DELETE FROM dead_letters WHERE id IN ({placeholders})", chunk).rowcount
        return moved

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
