"""The Alembic migrations build exactly the schema the models declare, on both backends.

On PostgreSQL, ``usage_records`` and ``ledger_entries`` are partitioned by month (migration
0014), which the models, written for both engines, do not say: their partitions are tables of
their own (left out below, each is its parent's copy), and a partitioned table's unique keys
must hold the partition key, which takes away exactly two things the models declare. Both are
listed here, and the schema is held to that list, no more and no less.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from metering.db import Database
from metering.models import Base

# (what autogenerate would do to match the models, the name it would do it to)
POSTGRES_PARTITIONING = {
    # Kept by usage_request_keys and its trigger instead (the constraint cannot span the partitions).
    ("add_constraint", "uq_usage_records_provider_id_request_id"),
    # A foreign key cannot name part of the partitioned table's (id, period) key; the column stays unique.
    ("add_fk", "fk_ledger_transactions_usage_record_id_usage_records"),
}


def _name(difference: Any) -> tuple[str, str]:
    return difference[0], difference[1].name


async def test_migrations_match_models(db: Database) -> None:
    def diff(connection: Connection) -> list[Any]:
        partitions = set(
            connection.execute(
                text(
                    db.by_dialect(
                        sqlite="SELECT name FROM sqlite_master WHERE 0",
                        postgresql="SELECT relname FROM pg_class WHERE relispartition",
                    )
                )
            ).scalars()
        )

        def include_name(name: str | None, type_: str, _parents: object) -> bool:
            return not (type_ == "table" and name in partitions)

        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
        return compare_metadata(context, Base.metadata)

    async with db.engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert {_name(d) for d in differences} == db.by_dialect(sqlite=set(), postgresql=POSTGRES_PARTITIONING)
    assert len(differences) == len(db.by_dialect(sqlite=(), postgresql=POSTGRES_PARTITIONING))


async def test_only_the_tables_that_grow_with_traffic_are_partitioned(db: Database) -> None:
    expected = db.by_dialect(sqlite=[], postgresql=["ledger_entries", "usage_records"])
    query = db.by_dialect(
        sqlite="SELECT name FROM sqlite_master WHERE 0", postgresql="SELECT relname FROM pg_class WHERE relkind = 'p'"
    )
    async with db.engine.connect() as connection:
        assert sorted((await connection.execute(text(query))).scalars()) == expected
