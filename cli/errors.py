"""Expected failures of a command as one line on stderr: exit 2 for usage and configuration, 1 at run time.

``describe`` is the one table from exception to message and exit code; ``LazyGroup`` in
``cli.main`` applies it to every command. What it does not know is a bug and keeps its
traceback, as does everything under ``metering --debug`` (or ``METERING_DEBUG=1``).
A type is looked up only if its module is already loaded: an exception cannot come from
a library nobody imported, and ``metering --help`` stays free of SQLAlchemy and pydantic.
"""

from __future__ import annotations

import sys

import typer

USAGE = 2
RUNTIME = 1

# SQLSTATE classes that mean the database cannot be reached or used right now, not a bug:
# connection exception, invalid authorization, no such database; then insufficient
# resources (too many connections) and operator intervention (shutdown, statement timeout).
_CONNECTION_SQLSTATES = ("08", "28", "3D")
_UNAVAILABLE_SQLSTATES = ("53", "57")
_DATABASE_DRIVERS = frozenset({"asyncpg", "aiosqlite", "sqlalchemy", "alembic"})


class CommandFailed(typer.TyperException):
    """An expected failure, already worded for the operator; printed by ``print_one_line``."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def print_one_line(exc: typer.TyperException) -> None:
    """``Error: message``, with a pointer to the help for usage errors (typer would print a usage line and a panel)."""
    message = one_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)  # usage errors carry the context of the command they are about
    if ctx is not None:
        message = f"{message} (see '{ctx.command_path} --help')"
    typer.echo(f"{typer.style('Error:', fg='red')} {message}", err=True)


def describe(exc: BaseException) -> CommandFailed | None:
    """The one-line message and exit code of an expected failure; ``None`` for anything else."""
    if isinstance(exc, CommandFailed):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        # Concurrent units failing together (e.g. every task losing the database): the first says it.
        described = [describe(inner) for inner in exc.exceptions]
        return described[0] if all(described) else None
    errors = sys.modules.get("metering.errors")
    if errors is not None and isinstance(exc, errors.MeteringError):
        return CommandFailed(exc.detail)
    return _settings_error(exc) or _schema_error(exc) or _database_error(exc) or _os_error(exc)


def _schema_error(exc: BaseException) -> CommandFailed | None:
    """The database's schema is at a revision this version does not know: a newer version migrated it."""
    alembic_exc = sys.modules.get("alembic.util.exc")
    if alembic_exc is None or not isinstance(exc, alembic_exc.CommandError):
        return None
    return CommandFailed(
        f"the database{_where()} cannot be migrated by this version of Metering ({one_line(str(exc))}); "
        "was it migrated by a newer one?"
    )


def _settings_error(exc: BaseException) -> CommandFailed | None:
    """Settings from the environment failed validation: one clause per variable."""
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is None or not isinstance(exc, pydantic_core.ValidationError) or exc.title != "Settings":
        return None
    from metering.config import Settings

    clauses = []
    for error in exc.errors(include_url=False, include_input=False):  # inputs may be secrets
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a model validator: its message names the variables
            clauses.append(message)
            continue
        field, *inner = (str(part) for part in error["loc"])
        variable = f"METERING_{field.upper()}" if field in Settings.model_fields else field
        where = f" ({'.'.join(inner)})" if inner else ""
        clauses.append(f"{variable}{where}: {message}")
    return CommandFailed("; ".join(one_line(clause) for clause in clauses), USAGE)


def _database_error(exc: BaseException) -> CommandFailed | None:
    """The database is unreachable, refuses us, or its URL is malformed; a failing query is a bug."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None:
        url_error = isinstance(exc, (sa_exc.ArgumentError, sa_exc.NoSuchModuleError))
        if url_error and _passed_through(exc, "sqlalchemy.engine.url"):
            return CommandFailed(f"METERING_DATABASE_URL: {one_line(str(exc))}", USAGE)
        if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
            return CommandFailed(f"cannot connect to the database{_where()}: {one_line(str(exc))}")
        if isinstance(exc, sa_exc.DBAPIError):
            sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
            reason = one_line(str(exc.orig)) if exc.orig is not None else type(exc).__name__
            if isinstance(exc, sa_exc.InterfaceError) or sqlstate[:2] in _CONNECTION_SQLSTATES:
                return CommandFailed(f"cannot connect to the database{_where()}: {reason}")
            if isinstance(exc, sa_exc.OperationalError) or sqlstate[:2] in _UNAVAILABLE_SQLSTATES:
                return CommandFailed(f"database error{_where()}: {reason}")
    if isinstance(exc, OSError) and _innermost_library(exc) in _DATABASE_DRIVERS:
        return CommandFailed(f"cannot connect to the database{_where()}: {_os_reason(exc)}")
    return None


def _os_error(exc: BaseException) -> CommandFailed | None:
    """A file or socket of the command's own (an --out path, a data folder, a port in use)."""
    if not isinstance(exc, OSError):
        return None
    return CommandFailed(f"{exc.filename}: {_os_reason(exc)}" if exc.filename else _os_reason(exc))


def _os_reason(exc: OSError) -> str:
    # asyncio's timeouts carry no text; refused connections carry it in strerror without the errno.
    return one_line(exc.strerror or str(exc) or type(exc).__name__)


def _where() -> str:
    """`` at host:port/name`` of the configured database, without its credentials."""
    config = sys.modules.get("metering.config")
    try:
        url = config.get_settings().database_url if config is not None else ""
    except Exception:  # noqa: BLE001 - the settings themselves may be what failed; the message stands without
        return ""
    return f" at {url.rsplit('@', 1)[-1]}" if url else ""


def _passed_through(exc: BaseException, module: str) -> bool:
    """Whether ``module`` was on the way from the command to the raise (URL parsing, not any misuse of SQLAlchemy)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == module:
            return True
        tb = tb.tb_next
    return False


def _innermost_library(exc: BaseException) -> str | None:
    """The top-level package of the deepest frame outside the standard library: who was doing the I/O.

    A refused connection surfaces in asyncio's socket code, called from the driver; an OSError
    from the command's own file work has the command (or ``metering``) as its innermost frame.
    """
    owner = None
    tb = exc.__traceback__
    while tb is not None:
        package = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        if package not in sys.stdlib_module_names:
            owner = package
        tb = tb.tb_next
    return owner
