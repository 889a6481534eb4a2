"""``metering jobs``: the scheduler process; ``metering jobs run-once JOB`` runs one pass and exits."""

from __future__ import annotations

import asyncio
import inspect
import logging

import typer

from cli.params import check_period, check_port_or_off
from jobs.scheduler import JOBS, job_function, jobs_database, run_job, serve_scheduler
from metering.hot_path.collector import loaded_objects_out_of_the_collector

app = typer.Typer(help="Scheduled jobs: run the scheduler, or one pass of a job.", invoke_without_command=True)


def _prepare() -> str:
    from metering.config import get_settings
    from metering.migrate import upgrade_on_open_sync  # Alembic is slow to import: loaded when a job runs

    settings = get_settings()
    upgrade_on_open_sync(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per cost batch is noise
    return settings.database_url


def _startup_objects_out_of_the_collector(names: list[str]) -> None:
    """The jobs' modules are loaded, then everything loaded so far leaves the cyclic collector's view
    (``gc.freeze``, as the API does at start-up).

    A cost batch allocates some 100,000 objects (rows, postings, their tuples), so full collections
    come every batch or two, and each walked the ~90,000 objects of the libraries too: measured, a
    fifth of a collect worker's CPU. What the jobs allocate is collected as before.
    """
    for name in names:
        job_function(name)
    loaded_objects_out_of_the_collector()


@app.callback()
def scheduler(
    ctx: typer.Context,
    only: list[str] | None = typer.Option(None, "--only", help="Run only these jobs (repeatable)."),
    metrics_port: int = typer.Option(
        0, help="Serve Prometheus metrics of the jobs on this port (0: off).", callback=check_port_or_off
    ),
) -> None:
    """Run every job on its schedule until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    unknown = sorted(set(only or ()) - set(JOBS))
    if unknown:
        raise typer.BadParameter(
            f"unknown job(s) {', '.join(unknown)}; known: {', '.join(JOBS)}", param_hint="'--only'"
        )
    from prometheus_client import start_http_server
    from rich.console import Console

    from metering.metrics import registry

    database_url = _prepare()
    _startup_objects_out_of_the_collector(list(only) if only else list(JOBS))
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    Console(stderr=True).print(f"scheduler: {', '.join(only or JOBS)}")
    asyncio.run(serve_scheduler(database_url, list(only) if only else None))


@app.command("run-once")
def run_once(
    job: str = typer.Argument(..., help=f"One of: {', '.join(JOBS)}."),
    period: str | None = typer.Option(None, help="Period YYYY-MM, for jobs that take one.", callback=check_period),
    force: bool = typer.Option(False, help="Passed to jobs that take it."),
) -> None:
    """Run one pass of JOB, print its summary, and exit."""
    if job not in JOBS:
        raise typer.BadParameter(f"unknown job {job!r}; known: {', '.join(JOBS)}", param_hint="'JOB'")
    options: dict[str, object] = {}
    if period is not None:
        options["period"] = period
    if force:
        options["force"] = True
    # A job that cannot take an option would fail with a TypeError once the database is open.
    parameters = inspect.signature(job_function(job)).parameters
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    for name in options:
        if not takes_any and name not in parameters:
            raise typer.BadParameter(f"job {job} takes no --{name}", param_hint=f"'--{name}'")

    database_url = _prepare()
    _startup_objects_out_of_the_collector([job])

    async def once() -> str:
        database = jobs_database(database_url)
        try:
            return await run_job(job, database, **options)
        finally:
            await database.dispose()

    typer.echo(asyncio.run(once()))
