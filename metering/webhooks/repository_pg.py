"""PostgreSQL's side of the deliveries' SQL: deliverers on many machines claim side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select

if TYPE_CHECKING:
    from metering.webhooks.repository import DeliverySql

_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


class PostgresDeliverySql:
    def skip_locked(self, statement: _Select) -> _Select:
        """Rows another deliverer's claim holds are passed over, not waited for; the claim's own
        conditions are checked again once a row is locked, so a row just leased is not taken twice."""
        return statement.with_for_update(skip_locked=True)


POSTGRES_DELIVERY_SQL: DeliverySql = PostgresDeliverySql()
