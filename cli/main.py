"""The ``metering`` command line; each command group lives in its own module."""

from __future__ import annotations

import typer

from cli import db, serve

app = typer.Typer(help="Metering: billing and usage metering for an inference router.", no_args_is_help=True)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")
# Further command modules register below.
from cli import jobs as jobs_cli, simulate as simulate_cli  # noqa: E402
app.add_typer(jobs_cli.app, name="jobs")
app.command("simulate-provider")(simulate_cli.simulate_provider)
from cli import export as export_cli  # noqa: E402
app.command("export")(export_cli.export)
from cli import verify as verify_cli  # noqa: E402
app.command("verify")(verify_cli.verify)
from cli import demo as demo_cli  # noqa: E402
app.command("demo")(demo_cli.demo)


if __name__ == "__main__":
    app()
