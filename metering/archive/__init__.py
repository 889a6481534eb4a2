"""Archive and retention: closed months moved out of the database into Parquet files (``metering archive``).

``files`` writes and reads the files and their manifest; ``repository`` holds the SQL;
``service`` runs the steps in an order that a kill at any point leaves nothing lost and a
rerun finishes. PostgreSQL only: SQLite keeps every month in one table per concept.
"""
