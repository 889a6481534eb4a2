"""The SQL of claims that differs between the engines: how a batch of ids is matched, and which reads lock rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import BigInteger, ColumnElement, Select, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY

from metering.models import UsageRecord

if TYPE_CHECKING:
    from metering.collection.claims.repository import ClaimsSql

_usage = UsageRecord.__table__
_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


class SqliteClaimsSql:
    """Every SQLite transaction is BEGIN IMMEDIATE: no other claim runs meanwhile, so no read needs a row lock."""

    def id_in(self, ids: Sequence[int]) -> ColumnElement[bool]:
        return _usage.c.id.in_(list(ids))

    def skip_locked(self, due: _Select) -> _Select:
        return due

    def for_update(self, statement: _Select) -> _Select:
        return statement


class PostgresClaimsSql:
    def id_in(self, ids: Sequence[int]) -> ColumnElement[bool]:
        """One array parameter (10k bind parameters would be slow to plan)."""
        return _usage.c.id == any_(bindparam("claim_ids", list(ids), type_=ARRAY(BigInteger)))

    def skip_locked(self, due: _Select) -> _Select:
        """Rows another worker's transaction holds are passed over, not waited for."""
        return due.with_for_update(skip_locked=True)

    def for_update(self, statement: _Select) -> _Select:
        return statement.with_for_update()


sqlite_claims_sql: ClaimsSql = SqliteClaimsSql()
postgres_claims_sql: ClaimsSql = PostgresClaimsSql()
