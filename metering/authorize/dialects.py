"""Which paths an authorize decision can take on each engine (``metering.authorize.service``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metering.authorize.service import DecisionPaths


class SqliteDecisionPaths:
    """Step by step only: the one statement is PostgreSQL's SQL, on its raw asyncpg pool."""

    decides_in_one_statement = False


class PostgresDecisionPaths:
    """The one statement first (``metering.hot_path.pg_decision``), step by step for what it leaves."""

    decides_in_one_statement = True


sqlite_decision_paths: DecisionPaths = SqliteDecisionPaths()
postgres_decision_paths: DecisionPaths = PostgresDecisionPaths()
