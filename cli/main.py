"""The ``metering`` command line; each command group lives in its own module.

A command's module is imported only when that command runs (or a listing needs its help):
``metering export`` does not pay for uvicorn, Alembic or the scheduler at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import typer
from typer.core import TyperCommand, TyperGroup

# Name → (module, attribute): a command function, or a ``typer.Typer`` of sub-commands.
# The order is the order of ``metering --help``: single commands first, then groups.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("cli.serve", "serve"),
    "export": ("cli.export", "export"),
    "verify": ("cli.verify", "verify"),
    "simulate-provider": ("cli.simulate", "simulate_provider"),
    "demo": ("cli.demo", "demo"),
    "db": ("cli.db", "app"),
    "jobs": ("cli.jobs", "app"),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """Import ``name``'s module and build its click command as an eager registration would."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer()  # the same defaults as ``app``: markup mode, pretty exceptions
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
    """The root group: its commands are ``COMMANDS``, loaded on first lookup."""

    def __init__(self, **attrs) -> None:  # noqa: ANN003
        super().__init__(**attrs)
        self.commands = LazyCommands(self.commands)


app = typer.Typer(cls=LazyGroup, no_args_is_help=True)


# A callback makes ``app`` a group though no command is registered eagerly; its docstring is the help.
@app.callback()
def metering() -> None:
    """Metering: billing and usage metering for an inference router."""


if __name__ == "__main__":
    app()
