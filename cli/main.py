"""The ``metering`` command line; each command group lives in its own module."""

from __future__ import annotations

import typer

from cli import db, demo, export, jobs, serve, simulate, verify

app = typer.Typer(help="Metering: billing and usage metering for an inference router.", no_args_is_help=True)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")
app.add_typer(jobs.app, name="jobs")
app.command("export")(export.export)
app.command("verify")(verify.verify)
app.command("simulate-provider")(simulate.simulate_provider)
app.command("demo")(demo.demo)


if __name__ == "__main__":
    app()
