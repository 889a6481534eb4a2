"""The ``metering`` command line; each command group lives in its own module."""

from __future__ import annotations

import typer

from cli import db, serve

app = typer.Typer(help="Metering: billing and usage metering for an inference router.", no_args_is_help=True)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")
# Further command modules register below.


if __name__ == "__main__":
    app()
