"""The ``metering`` command line; each command group lives in its own module.

A command's module is imported only when that command runs (or a listing needs its help):
``metering export`` does not pay for uvicorn, Alembic or the scheduler at start-up.
Expected failures of every command end as one line on stderr (see ``cli.errors``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from cli import errors

# Name → (module, attribute): a command function, or a ``typer.Typer`` of sub-commands.
# The order is the order of ``metering --help``: single commands first, then groups.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("cli.serve", "serve"),
    "export": ("cli.export", "export"),
    "verify": ("cli.verify", "verify"),
    "archive": ("cli.archive", "archive"),
    "token": ("cli.token", "token"),
    "simulate-provider": ("cli.simulate", "simulate_provider"),
    "demo": ("cli.demo", "demo"),
    "db": ("cli.db", "app"),
    "jobs": ("cli.jobs", "app"),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """Import ``name``'s module and build its click command as an eager registration would."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(pretty_exceptions_enable=False)  # the same settings as ``app``
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


class LazyCommands(MutableMapping):
    """Every command name at once (listings, typo suggestions); a command itself on first lookup."""

    def __init__(self, loaded: MutableMapping) -> None:
        self._loaded = dict(loaded)

    def __getitem__(self, name: str) -> TyperCommand | TyperGroup:
        if name not in self._loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: TyperCommand | TyperGroup) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(COMMANDS), **dict.fromkeys(self._loaded)})

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._loaded))


class LazyGroup(TyperGroup):
    """The root group: its commands are ``COMMANDS``, loaded on first lookup; it words every command's failures."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self.commands)

    def invoke(self, ctx: typer.Context) -> None:
        """Run the command; an expected failure becomes ``CommandFailed`` unless ``--debug`` asks for the traceback.

        Returns nothing, as typer's standalone mode ignores a command's return value:
        ``main`` then reads any number it gets back as an exit code.
        """
        try:
            super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            failure = None if ctx.params.get("debug") else errors.describe(exc)
            if failure is None:
                raise
            raise failure from exc

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Typer's standalone mode, but a usage or expected error is one line (typer prints a usage line and a panel)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:
            # A bare ``metering`` or ``metering db``: the help is already printed (typer tells it by name too).
            if type(exc).__name__ != "NoArgsIsHelpError":
                errors.print_one_line(exc)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code or 0)


# Unexpected errors (bugs) print Python's plain traceback, not a page of rich panels with locals.
app = typer.Typer(cls=LazyGroup, no_args_is_help=True, pretty_exceptions_enable=False)


# A callback makes ``app`` a group though no command is registered eagerly; its docstring is the help.
@app.callback()
def metering(
    debug: bool = typer.Option(
        False, "--debug", envvar="METERING_DEBUG", help="Show the traceback of an error instead of one line."
    ),
) -> None:
    """Metering: billing and usage metering for an inference router."""
    # ``debug`` is read from the context by ``LazyGroup.invoke``, which wraps this callback too.


if __name__ == "__main__":
    app()
