"""SQLite's side of the deliveries' SQL: every transaction is BEGIN IMMEDIATE, so a claim is already
serialized and no read needs a row lock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select

if TYPE_CHECKING:
    from metering.webhooks.repository import DeliverySql

_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


class SqliteDeliverySql:
    def skip_locked(self, statement: _Select) -> _Select:
        return statement


SQLITE_DELIVERY_SQL: DeliverySql = SqliteDeliverySql()
