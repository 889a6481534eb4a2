"""The hot path's shortcuts, fenced: each one is here, says what it buys, and has a test holding it
to the ordinary path it replaces.

``authorize`` runs before every routed request and ingest takes every record, so both skip some of
the general machinery. Nothing else in the code takes a shortcut; a new one joins this list.

- ``api/fast_lane.py`` (the API's half, outside the core): an everyday authorize request is decided
  before FastAPI's middleware, routing and validation run, which buys the framework's per-request
  work. ``METERING_AUTHORIZE_FAST_LANE=false`` turns it off. Held to the framework's answers, byte
  for byte, by ``tests/api/test_fast_lane.py``.
- ``pg_decision.py``: on PostgreSQL an authorize decision is one statement (read the totals, check
  the rule, place the hold) instead of a transaction of several round trips. Held to the rule
  (``metering.charging.rule``) over random totals by ``tests/metering/hot_path/test_pg_decision.py``.
- ``pg_connections.py``: that statement runs on a small pool of asyncpg connections of its own,
  without SQLAlchemy's session and connection layers, under the same timeouts and settings as the
  engine's, behind PgBouncer too (``tests/metering/hot_path/test_pg_connections.py``,
  ``tests/deploy/test_pgbouncer.py``).
- ``grant_batches.py``: on PostgreSQL, the decisions that find their payer's period not granted
  yet (no grant made ahead by the grant-credits job) wait for one transaction that grants them
  all, instead of each posting its grant in its own transaction, all queued on the period's one
  platform-side balance. Held to granting one by one (the same grants, postings and balances,
  once per account) by ``tests/metering/hot_path/test_grant_batches.py``.
- ``group_commit.py``: on SQLite, usage batches that arrive together are written in one
  transaction, one after the other in arrival order, so SQLite's single writer commits once per
  group instead of once per batch (``tests/metering/hot_path/test_group_commit.py``: the same
  records stored, the same answers, a failing batch failing alone).
- ``collector.py``: after start-up, the objects loaded so far leave the cyclic garbage collector's
  view, so full collections under load do not walk them (``tests/api/test_fast_lane.py``).

``bench/authorize.py`` and ``bench/ingest.py`` measure the two paths against their baselines (the
server's trivial route, the database's raw INSERT); figures live there, not here.
"""
