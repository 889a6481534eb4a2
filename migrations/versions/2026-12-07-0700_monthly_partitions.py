"""Monthly partitions of the tables that grow with traffic; the archive's record of the months it moved out.

PostgreSQL: ``usage_records`` and ``ledger_entries`` become tables partitioned by month
(``LIST (period)``), converted in place: the old table is renamed, the partitioned one is
created LIKE it (columns, defaults, checks), with one partition per month its rows hold, the
current month and three ahead, and a DEFAULT partition so that a row of a month without a
partition is never lost; the rows are copied, the indexes, foreign keys, triggers and storage
settings of the old table are recreated on the new one, its sequence moves over, and the old
table is dropped. All of it in the migration's one transaction, under an exclusive lock.

- ``ledger_entries`` gets ``period``, its transaction's period (filled here from
  ``ledger_transactions``, then by the ledger's repositories on insert).
- A partitioned table's unique keys must hold its partition key: the primary keys become
  ``(id, period)``, and ``(provider_id, request_id)``, which must stay unique across months,
  moves to ``usage_request_keys`` (filled here from the records). Ingest writes a record's key
  in the statement that stores it; ``usage_request_keys_on_insert``, a statement trigger on
  ``usage_records``, adds the key of a record written any other way and fails with a unique
  violation when that key names another record.
- The foreign keys that pointed at ``usage_records.id`` (``ledger_transactions.usage_record_id``)
  are dropped: they cannot name half of a key, and a late cost posted to an open period must
  outlive its record when the record's month is archived. ``ledger_transactions`` keeps its
  unique ``usage_record_id``: still one cost transaction per request.

``ledger_transactions`` stays one table: its unique ``idempotency_key`` is what makes every
posting happen once, and it must be unique across months. ``holds`` too: a hold is found by
its id alone on authorize's and ingest's paths. ``metering archive`` deletes the rows of both
for the months it archives.

SQLite keeps one table per concept: only ``ledger_entries.period`` and the new tables.

Revision ID: 0014_monthly_partitions
Revises: 0013_finance_credits
Create Date: 2026-12-07 07:00:00
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0014_monthly_partitions"
down_revision = "0013_finance_credits"
branch_labels = None
depends_on = None

PARTITIONED = ("usage_records", "ledger_entries")
MONTHS_AHEAD = 3
PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
KEYS_TRIGGER = "usage_request_keys_on_insert"
# Written with ``metering.partitions``' naming: usage_records_p2026_12, usage_records_default.
KEYS_FUNCTION = f"""
    CREATE FUNCTION {KEYS_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        INSERT INTO usage_request_keys (provider_id, request_id, period, usage_record_id)
        SELECT n.provider_id, n.request_id, n.period, n.id FROM new_rows AS n
        WHERE NOT EXISTS (
            SELECT 1 FROM usage_request_keys AS k
            WHERE k.provider_id = n.provider_id AND k.request_id = n.request_id AND k.usage_record_id = n.id
        )
        ORDER BY n.provider_id, n.request_id;
        RETURN NULL;
    END
    $body$"""


def partition_name(table: str, period: str) -> str:
    return f"{table}_p{period.replace('-', '_')}"


def _months_ahead(now: datetime) -> list[str]:
    year, month = now.year, now.month
    months = []
    for _ in range(MONTHS_AHEAD + 1):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def upgrade() -> None:
    op.create_table(
        "usage_request_keys",
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("usage_record_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "request_id", name=op.f("pk_usage_request_keys")),
    )
    op.create_table(
        "archived_periods",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("tables", sa.JSON(), nullable=False),
        sa.Column("dropped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_archived_periods")),
    )
    op.create_table(
        "archived_ledger_sums",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("ledger_account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("amount_nano_usd", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ledger_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_archived_ledger_sums_ledger_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("period", "ledger_account_id", name=op.f("pk_archived_ledger_sums")),
    )
    op.create_table(
        "archived_account_sums",
        sa.Column("account_name", sa.String(length=96), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("sums", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("account_name", "period", name=op.f("pk_archived_account_sums")),
    )
    if op.get_context().dialect.name != "postgresql":
        with op.batch_alter_table("ledger_entries") as batch:
            batch.add_column(sa.Column("period", sa.String(length=7), nullable=True))
        op.execute(
            "UPDATE ledger_entries SET period = "
            "(SELECT t.period FROM ledger_transactions AS t WHERE t.id = ledger_entries.transaction_id)"
        )
        with op.batch_alter_table("ledger_entries") as batch:
            batch.alter_column("period", existing_type=sa.String(length=7), nullable=False)
        return
    op.execute("LOCK TABLE usage_records, ledger_transactions, ledger_entries IN ACCESS EXCLUSIVE MODE")
    connection = op.get_bind()
    ahead = _months_ahead(datetime.now(UTC))
    _drop_foreign_keys_to("usage_records")
    old = _set_aside("usage_records")
    _partition(
        "usage_records",
        old,
        extra_columns="",
        copy=f"SELECT * FROM {old}",
        months={*_distinct(connection, f"SELECT DISTINCT period FROM {old}"), *ahead},
    )
    op.execute(
        "INSERT INTO usage_request_keys (provider_id, request_id, period, usage_record_id) "
        f"SELECT provider_id, request_id, period, id FROM {old} ORDER BY provider_id, request_id"
    )
    op.execute(f"DROP TABLE {old}")
    op.execute(KEYS_FUNCTION)
    op.execute(
        f"CREATE TRIGGER {KEYS_TRIGGER} AFTER INSERT ON usage_records REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {KEYS_TRIGGER}()"
    )
    old = _set_aside("ledger_entries")
    _partition(
        "ledger_entries",
        old,
        extra_columns=", period varchar(7) NOT NULL",
        copy=f"SELECT e.*, t.period FROM {old} AS e JOIN ledger_transactions AS t ON t.id = e.transaction_id",
        months={*_distinct(connection, "SELECT DISTINCT period FROM ledger_transactions"), *ahead},
    )
    op.execute(f"DROP TABLE {old}")
    op.execute("ANALYZE usage_records, usage_request_keys, ledger_entries")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("LOCK TABLE usage_records, ledger_transactions, ledger_entries IN ACCESS EXCLUSIVE MODE")
        op.execute(f"DROP TRIGGER {KEYS_TRIGGER} ON usage_records")
        op.execute(f"DROP FUNCTION {KEYS_TRIGGER}()")
        for table in PARTITIONED:
            _unpartition(table)
        op.execute("ALTER TABLE ledger_entries DROP COLUMN period")
        op.create_unique_constraint(
            op.f("uq_usage_records_provider_id_request_id"), "usage_records", ["provider_id", "request_id"]
        )
        op.create_foreign_key(
            op.f("fk_ledger_transactions_usage_record_id_usage_records"),
            "ledger_transactions",
            "usage_records",
            ["usage_record_id"],
            ["id"],
        )
    else:
        with op.batch_alter_table("ledger_entries") as batch:
            batch.drop_column("period")
    op.drop_table("archived_account_sums")
    op.drop_table("archived_ledger_sums")
    op.drop_table("archived_periods")
    op.drop_table("usage_request_keys")


def _distinct(connection: sa.Connection, sql: str) -> set[str]:
    return {value for (value,) in connection.execute(sa.text(sql)) if value is not None}


def _drop_foreign_keys_to(table: str) -> None:
    """Foreign keys naming ``table``'s id cannot name a partitioned table's ``(id, period)`` key."""
    for referencing, name in op.get_bind().execute(
        sa.text(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE confrelid = CAST(:table AS regclass) AND contype = 'f' ORDER BY 1, 2"
        ),
        {"table": table},
    ):
        op.execute(f'ALTER TABLE {referencing} DROP CONSTRAINT "{name}"')


def _set_aside(table: str) -> str:
    """Rename ``table`` out of the way, freeing the names of its key constraints and indexes."""
    old = f"{table}_unpartitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    return old


def _definitions(old: str) -> dict[str, list[str]]:
    """What the new table recreates of ``old``: plain indexes, foreign keys, triggers, storage settings."""
    connection = op.get_bind()
    params = {"table": old}
    indexes = connection.execute(
        sa.text(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index AS i "
            "WHERE i.indrelid = CAST(:table AS regclass) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid) ORDER BY 1"
        ),
        params,
    ).scalars()
    foreign_keys = connection.execute(
        sa.text(
            "SELECT format('ADD CONSTRAINT %I %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint "
            "WHERE conrelid = CAST(:table AS regclass) AND contype = 'f' ORDER BY conname"
        ),
        params,
    ).scalars()
    triggers = connection.execute(
        sa.text(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = CAST(:table AS regclass) "
            "AND NOT tgisinternal ORDER BY tgname"
        ),
        params,
    ).scalars()
    options = connection.scalar(sa.text("SELECT reloptions FROM pg_class WHERE oid = CAST(:table AS regclass)"), params)
    return {
        "indexes": list(indexes),
        "foreign_keys": list(foreign_keys),
        "triggers": list(triggers),
        "options": list(options or ()),
    }


def _on(definition: str, old: str, table: str) -> str:
    """An index or trigger definition of ``old``, naming ``table`` instead."""
    return re.sub(rf" ON (ONLY )?(public\.)?{old} ", rf" ON \g<1>{table} ", definition, count=1)


def _partition(table: str, old: str, *, extra_columns: str, copy: str, months: set[str]) -> None:
    """``table`` again, partitioned by month, with the rows, indexes, keys and triggers of ``old``."""
    connection = op.get_bind()
    kept = _definitions(old)
    for definition in kept["indexes"]:
        name = definition.split()[2] if definition.startswith("CREATE INDEX") else definition.split()[3]
        op.execute(f"DROP INDEX {name}")
    sequence = connection.scalar(sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": old})
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS{extra_columns}) "
        "PARTITION BY LIST (period)"
    )
    # The old table's key constraint goes first: its index bears the name the new one takes.
    op.execute(f"ALTER TABLE {old} DROP CONSTRAINT pk_{table}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id, period)")
    storage = f" WITH ({', '.join(kept['options'])})" if kept["options"] else ""
    for month in sorted(m for m in months if PERIOD.match(m)):
        op.execute(
            f"CREATE TABLE {partition_name(table, month)} PARTITION OF {table} FOR VALUES IN ('{month}'){storage}"
        )
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT{storage}")
    op.execute(f"INSERT INTO {table} {copy}")
    for definition in kept["indexes"]:
        op.execute(_on(definition, old, table))
    for foreign_key in kept["foreign_keys"]:
        op.execute(f"ALTER TABLE {table} {foreign_key}")
    for trigger in kept["triggers"]:
        op.execute(_on(trigger, old, table))
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")


def _unpartition(table: str) -> None:
    """``table`` as one plain table again, keyed by ``id`` alone (the downgrade)."""
    connection = op.get_bind()
    partitioned = f"{table}_partitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {partitioned}")
    kept = _definitions(partitioned)
    kept["triggers"] = [t for t in kept["triggers"] if KEYS_TRIGGER not in t]
    kept["options"] = list(
        connection.scalar(
            sa.text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"), {"t": f"{table}_default"}
        )
        or ()
    )
    for definition in kept["indexes"]:
        op.execute(f"DROP INDEX {definition.split()[2]}")
    sequence = connection.scalar(sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": partitioned})
    op.execute(f"ALTER TABLE {partitioned} DROP CONSTRAINT pk_{table}")
    storage = f" WITH ({', '.join(kept['options'])})" if kept["options"] else ""
    op.execute(f"CREATE TABLE {table} (LIKE {partitioned} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){storage}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
    op.execute(f"INSERT INTO {table} SELECT * FROM {partitioned}")
    for definition in kept["indexes"]:
        op.execute(_on(definition, partitioned, table).replace(" ON ONLY ", " ON "))
    for foreign_key in kept["foreign_keys"]:
        op.execute(f"ALTER TABLE {table} {foreign_key}")
    for trigger in kept["triggers"]:
        op.execute(_on(trigger, partitioned, table))
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")
    op.execute(f"DROP TABLE {partitioned}")
