"""The compressed month: the process clock steps through a past month while traffic and jobs run.

Each day: at 09:00 the day's requests (on the first ``TRAFFIC_DAYS``) go through the router
one at a time and the hook's spool is delivered; the day's provider faults are set; at 12:00
and 20:00 the scheduler's ``collect-costs`` and ``expire-holds`` run, as they would every
minute. The period opens with ``grant-credits`` and, once its grace window has passed,
closes with ``close-period`` (no ``--force``) and ``sync-stripe``.

Between steps the clock jumps forward; within a step it flows with the wall clock, so
every timestamp (authorize, records, postings, invoices) keeps its real order.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from demo.providers import FaultPlan
from demo.scenario import Traffic
from jobs.scheduler import run_job
from metering.db import Database
from metering.periods import period_bounds, set_clock_offset
from metering_hook import UsageSender

COLLECT_HOURS = (12, 20)
# Requests are sent on the first 28 days only, which every month has: the bill does not depend on
# which month the demo happens to play. The days after still run the jobs.
TRAFFIC_DAYS = 28
# Lines of a collect-costs summary worth showing: requests quarantined or unpriced (a failing
# provider is already logged by the job as a warning).
_NOTEWORTHY = re.compile(r"quarantined=[1-9]|unpriced=[1-9]")
_TIMINGS = re.compile(r" (claim|http|validate|apply)=\S+")


class SimulatedClock:
    """Moves ``metering.periods.utcnow`` of this whole process to moments of ``period``."""

    def __init__(self, period: str) -> None:
        self.period = period
        self.start, self.end = period_bounds(period)
        self.days = (self.end - self.start).days

    def at(self, day: int, hour: int = 0, minute: int = 0) -> datetime:
        """``day`` (1-based) of the period at hh:mm; days past the end run into the next period."""
        return self.start + timedelta(days=day - 1, hours=hour, minutes=minute)

    def set(self, moment: datetime) -> None:
        set_clock_offset(moment - datetime.now(UTC))


class Month:
    """Plays the period's days; ``play`` returns the close-period job's summary."""

    def __init__(
        self,
        *,
        clock: SimulatedClock,
        database: Database,
        traffic: Traffic,
        faults: FaultPlan,
        sender: UsageSender,
        http: httpx.AsyncClient,
        console: Console,
        grace_hours: int,
    ) -> None:
        self.clock, self.database, self.traffic, self.faults = clock, database, traffic, faults
        self.sender, self.http, self.console, self.grace_hours = sender, http, console, grace_hours
        self._seen_refusals: set[tuple[str, str]] = set()

    async def play(self) -> str:
        clock = self.clock
        clock.set(clock.at(1, 0, 5))
        await run_job("grant-credits", self.database)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"playing {clock.period}", total=clock.days)
            for day in range(1, clock.days + 1):
                await self._day(day)
                progress.advance(task)
        return await self._close()

    async def _day(self, day: int) -> None:
        clock = self.clock
        clock.set(clock.at(day, 9))
        served = await self.traffic.run_day(day) if day <= TRAFFIC_DAYS else {}
        if not await self.sender.flush(timeout=60):
            raise RuntimeError(f"day {day}: the router's usage spool could not be delivered")
        self._report_new_refusals(day)
        for event in await self.faults.apply(self.http, day=day, billable_ids=served):
            self._event(day, event.provider, event.describe())
        for hour in COLLECT_HOURS:
            clock.set(clock.at(day, hour))
            self._report_collect(day, await run_job("collect-costs", self.database))
            await run_job("expire-holds", self.database)

    async def _close(self) -> str:
        clock = self.clock
        clock.set(clock.end + timedelta(minutes=5))
        await run_job("grant-credits", self.database)
        await run_job("collect-costs", self.database)
        clock.set(clock.end + timedelta(hours=self.grace_hours, minutes=30))
        await run_job("collect-costs", self.database)
        await run_job("expire-holds", self.database)
        closed = await run_job("close-period", self.database, period=clock.period)
        await run_job("sync-stripe", self.database)
        self.console.print(
            f"[bold]{clock.end + timedelta(hours=self.grace_hours):%Y-%m-%d}[/bold] grace window over: {closed}"
        )
        return closed

    def _event(self, day: int, who: str, text: str) -> None:
        self.console.print(f"[dim]{self.clock.at(day):%Y-%m-%d}[/dim] [cyan]{who:<13}[/cyan] {text}", highlight=False)

    def _report_new_refusals(self, day: int) -> None:
        for payer, reasons in self.traffic.log.refusals.items():
            for reason in reasons:
                if (payer, reason) not in self._seen_refusals:
                    self._seen_refusals.add((payer, reason))
                    self._event(day, payer, f"first refusal: [yellow]{reason}[/yellow]")

    def _report_collect(self, day: int, summary: str) -> None:
        for line in summary.splitlines()[1:]:
            if _NOTEWORTHY.search(line):
                provider, _, rest = line.strip().partition(": ")
                self._event(day, provider, f"collect-costs: {_TIMINGS.sub('', rest)}")
