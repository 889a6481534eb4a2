"""Every scheduled job, registered in this one place, and the scheduler process that runs them.

A job is a module with ``async def run_once(database) -> str``. ``JOBS`` maps the
command-line name to the module and its trigger; adding a job is one line here.
Modules are imported when a job runs, so one job's import error never stops the others.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from metering.config import get_settings
from metering.db import Database
from metering.periods import utcnow

log = logging.getLogger("metering.jobs")


@dataclass(frozen=True)
class JobSpec:
    module: str
    trigger: Callable[[], BaseTrigger]
    # Run at scheduler start as well (idempotent catch-up jobs).
    run_at_start: bool = False


JOBS: dict[str, JobSpec] = {
    "collect-costs": JobSpec("jobs.collect_costs", lambda: IntervalTrigger(minutes=1), run_at_start=True),
    "grant-credits": JobSpec("jobs.grant_credits", lambda: CronTrigger(minute=5), run_at_start=True),
    "expire-holds": JobSpec("jobs.expire_holds", lambda: IntervalTrigger(minutes=1)),
    "close-period": JobSpec("jobs.close_period", lambda: CronTrigger(minute=15), run_at_start=True),
    "sync-stripe": JobSpec("jobs.sync_stripe", lambda: IntervalTrigger(minutes=5)),
    "fold-usage-rollups": JobSpec("jobs.fold_usage_rollups", lambda: IntervalTrigger(minutes=1)),
    "deliver-webhooks": JobSpec("jobs.deliver_webhooks", lambda: IntervalTrigger(seconds=5), run_at_start=True),
    "create-partitions": JobSpec("jobs.create_partitions", lambda: CronTrigger(minute=25), run_at_start=True),
}


def job_function(name: str) -> Callable[..., Awaitable[str]]:
    """The ``run_once`` of a registered job (imported now)."""
    return importlib.import_module(JOBS[name].module).run_once


def jobs_database(database_url: str, *, pool_size: int | None = None) -> Database:
    """The jobs' ``Database``: every PostgreSQL statement under ``jobs_statement_timeout_ms``; ``pool_size``
    defaults to ``METERING_DATABASE_POOL_SIZE``."""
    return Database(database_url, pool_size=pool_size, statement_timeout_ms=get_settings().jobs_statement_timeout_ms)


async def run_job(name: str, database: Database, **options: Any) -> str:
    """One pass of one job, as ``metering jobs run-once NAME`` and the scheduler run it."""
    return await job_function(name)(database, **options)


async def _scheduled(name: str, database: Database) -> None:
    try:
        summary = await run_job(name, database)
    except Exception:  # a failing pass is logged; the next one runs on schedule
        log.exception("job %s failed", name)
        return
    log.info("job %s: %s", name, summary)


def build_scheduler(database: Database, names: list[str] | None = None) -> AsyncIOScheduler:
    """A scheduler with ``names`` (default: every job); one instance of each job at a time."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    for name in names or list(JOBS):
        spec = JOBS[name]
        options: dict[str, Any] = {
            "id": name,
            "name": name,
            "args": (name, database),
            "trigger": spec.trigger(),
            # A pass that outlasts its interval is not run twice at once; missed runs collapse into one.
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": 30,
        }
        if spec.run_at_start:
            options["next_run_time"] = utcnow()
        scheduler.add_job(_scheduled, **options)
    return scheduler


async def serve_scheduler(database_url: str, names: list[str] | None = None) -> None:
    """Run the scheduler until SIGINT/SIGTERM, then let running passes finish."""
    database = jobs_database(database_url)
    scheduler = build_scheduler(database, names)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scheduler.start()
    log.info("scheduler running: %s", ", ".join(job.id for job in scheduler.get_jobs()))
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        await database.dispose()
