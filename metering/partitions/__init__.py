"""Monthly partitions of the tables that grow with traffic (PostgreSQL): created ahead, never on the request path.

``usage_records`` and ``ledger_entries`` are partitioned by ``period`` (migration 0014). The
``create-partitions`` job creates the current month's partition and the next ones before any
row needs them, and moves the rows that landed in the DEFAULT partition (a month nobody created
in time) into a partition of their own. ``metering archive`` drops a month's partitions once
its rows are in Parquet. SQLite keeps one table per concept: every operation here is a no-op.
"""
