"""Expected failures of ``metering``: one line on stderr, exit 2 for usage and configuration, 1 at run time.

Each case runs the installed ``metering`` command in a fresh process, as an operator would,
with an empty data folder of its own and none of the caller's ``METERING_`` variables.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cli.errors import RUNTIME, USAGE, CommandFailed, describe
from metering.config import Settings
from metering.errors import InvalidInput, MeteringError, ServiceUnavailable
from metering.periods import current_period

METERING = shutil.which(
    "metering", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)
# Nothing listens on port 1: the connection is refused at once.
UNREACHABLE_DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:1/x"
PERIOD_LINE = "Error: Invalid value for '--period': must be YYYY-MM with month 01-12 (year 1000-9998), got '2026-13'"


def metering(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert METERING is not None, "the metering command is not installed"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("METERING_")}
    environment.update(METERING_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run([METERING, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The single line the command wrote to stderr, after checking its exit code."""
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


class TestUsageErrors:
    def test_an_unknown_option(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "serve", "--bogus"), USAGE)
        assert line.startswith("Error: No such option: --bogus")
        assert line.endswith("(see 'metering serve --help')")

    def test_an_unknown_command(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "exprt"), USAGE)
        assert line == "Error: No such command 'exprt'. Did you mean 'export'? (see 'metering --help')"

    def test_an_invalid_period_to_close(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "jobs", "run-once", "close-period", "--period", "2026-13"), USAGE)
        assert line == f"{PERIOD_LINE} (see 'metering jobs run-once --help')"

    def test_an_invalid_period_to_export(self, tmp_path: Path) -> None:
        result = metering(tmp_path, "export", "ledger", "--period", "2026-13", "--out", str(tmp_path / "x.csv"))
        assert one_line(result, USAGE) == f"{PERIOD_LINE} (see 'metering export --help')"
        assert list(tmp_path.glob("x.csv*")) == []

    def test_a_period_to_a_job_that_takes_none(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "jobs", "run-once", "expire-holds", "--period", "2026-10"), USAGE)
        assert line == (
            "Error: Invalid value for '--period': job expire-holds takes no --period (see 'metering jobs run-once --help')"
        )

    def test_an_unknown_job(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "jobs", "run-once", "nope"), USAGE)
        assert line.startswith("Error: Invalid value for 'JOB': unknown job 'nope'; known: collect-costs,")

    def test_a_directory_as_the_export_file(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "export", "ledger", "--out", str(tmp_path)), USAGE)
        assert (
            line
            == f"Error: Invalid value for '--out': file '{tmp_path}' is a directory. (see 'metering export --help')"
        )

    def test_an_unknown_job_to_schedule(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "jobs", "--only", "nope"), USAGE)
        assert line.startswith("Error: Invalid value for '--only': unknown job(s) nope; known: collect-costs,")

    def test_a_demo_folder_that_is_not_the_demos(self, tmp_path: Path) -> None:
        folder = tmp_path / "mine"
        folder.mkdir()
        (folder / "notes.txt").write_text("keep me")
        line = one_line(metering(tmp_path, "demo", "--data-dir", str(folder), "--no-serve"), USAGE)
        assert line == (
            f"Error: Invalid value for '--data-dir': {folder} is not empty and not a demo data folder; "
            "choose another --data-dir (see 'metering demo --help')"
        )
        assert (folder / "notes.txt").read_text() == "keep me"

    def test_no_command_shows_the_help(self, tmp_path: Path) -> None:
        result = metering(tmp_path)
        assert result.returncode == USAGE
        assert "Usage: metering [OPTIONS] COMMAND [ARGS]..." in result.stdout
        assert "--debug" in result.stdout and "METERING_DEBUG" in result.stdout
        assert "Error" not in result.stderr

    def test_faults_that_are_not_json(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "simulate-provider", "--faults", "{nope"), USAGE)
        assert line.startswith("Error: Invalid value for '--faults': not JSON:")


class TestPorts:
    @pytest.mark.parametrize(
        ("args", "shown"),
        [
            (
                ("serve", "--port", "99999"),
                "'--port': must be a TCP port from 1 to 65535, got 99999 (see 'metering serve --help')",
            ),
            (
                ("serve", "--port", "0"),
                "'--port': must be a TCP port from 1 to 65535, got 0 (see 'metering serve --help')",
            ),
            (
                ("simulate-provider", "--port", "70000"),
                "'--port': must be a TCP port from 1 to 65535, got 70000 (see 'metering simulate-provider --help')",
            ),
            (
                ("jobs", "--metrics-port", "65536"),
                "'--metrics-port': must be a TCP port from 1 to 65535, got 65536 (see 'metering jobs --help')",
            ),
        ],
    )
    def test_a_port_out_of_range_is_refused_before_listening(
        self, tmp_path: Path, args: tuple[str, ...], shown: str
    ) -> None:
        assert one_line(metering(tmp_path, *args), USAGE) == f"Error: Invalid value for {shown}"


class TestSettings:
    """Settings are configuration: a bad one is exit 2, named by its variable, in one line."""

    def test_production_without_a_database(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "verify", METERING_ENVIRONMENT="production"), USAGE)
        assert line == "Error: METERING_DATABASE_URL is required in production"

    def test_production_with_a_placeholder_secret(self, tmp_path: Path) -> None:
        result = metering(
            tmp_path,
            "verify",
            METERING_ENVIRONMENT="production",
            METERING_DATABASE_URL=UNREACHABLE_DATABASE,
            METERING_SERVICE_TOKENS="changeme",
        )
        assert one_line(result, USAGE) == "Error: METERING_SERVICE_TOKENS must be set to a real secret in production"

    def test_every_invalid_variable_on_one_line(self, tmp_path: Path) -> None:
        result = metering(tmp_path, "verify", METERING_MAX_BODY_BYTES="5", METERING_ENVIRONMENT="staging")
        assert one_line(result, USAGE) == (
            "Error: METERING_ENVIRONMENT: Input should be 'embedded' or 'production'; "
            "METERING_MAX_BODY_BYTES: Input should be greater than or equal to 1024"
        )

    def test_a_malformed_database_url(self, tmp_path: Path) -> None:
        line = one_line(metering(tmp_path, "verify", METERING_DATABASE_URL="not a url"), USAGE)
        assert line == "Error: METERING_DATABASE_URL: Could not parse SQLAlchemy URL from given URL string"


class TestRuntimeErrors:
    def test_closing_the_open_period(self, tmp_path: Path) -> None:
        period = current_period()
        line = one_line(metering(tmp_path, "jobs", "run-once", "close-period", "--period", period), RUNTIME)
        assert line.startswith(f"Error: period {period} is still open: it ends at ")

    @pytest.mark.parametrize(
        "args",
        [
            ("verify",),
            ("jobs", "run-once", "collect-costs"),
            ("export", "ledger", "--period", "2026-10", "--out", "x.csv"),
            ("db", "upgrade"),
        ],
        ids=["verify", "collect-costs", "export", "db-upgrade"],
    )
    def test_an_unreachable_database(self, tmp_path: Path, args: tuple[str, ...]) -> None:
        line = one_line(metering(tmp_path, *args, METERING_DATABASE_URL=UNREACHABLE_DATABASE), RUNTIME)
        assert line.startswith("Error: cannot connect to the database at 127.0.0.1:1/x: ")
        assert list(tmp_path.glob("x.csv*")) == []  # no partial export is left behind

    def test_a_database_migrated_by_a_newer_version(self, tmp_path: Path) -> None:
        database = tmp_path / "newer.db"
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            connection.execute("INSERT INTO alembic_version VALUES ('9999_from_a_newer_version')")
        line = one_line(metering(tmp_path, "verify", METERING_DATABASE_URL=f"sqlite+aiosqlite:///{database}"), RUNTIME)
        assert line.startswith(f"Error: the database at sqlite+aiosqlite:///{database} cannot be migrated")
        assert "9999_from_a_newer_version" in line
        assert line.endswith("was it migrated by a newer one?")

    def test_an_export_file_in_a_missing_folder(self, tmp_path: Path) -> None:
        # The file is opened before the database is asked anything: the path is the error, not the database.
        result = metering(
            tmp_path,
            "export",
            "ledger",
            "--period",
            "2026-10",
            "--out",
            "/proc/nope/x.csv",
            METERING_DATABASE_URL=UNREACHABLE_DATABASE,
        )
        assert one_line(result, RUNTIME) == "Error: cannot write /proc/nope/x.csv: No such file or directory"

    @pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
    def test_an_export_file_in_a_read_only_folder(self, tmp_path: Path) -> None:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        result = metering(
            tmp_path,
            "export",
            "ledger",
            "--period",
            "2026-10",
            "--out",
            str(folder / "x.csv"),
            METERING_DATABASE_URL=UNREACHABLE_DATABASE,
        )
        assert one_line(result, RUNTIME) == f"Error: cannot write {folder / 'x.csv'}: Permission denied"


class TestDebug:
    """``--debug`` or ``METERING_DEBUG=1``: the traceback instead of the line, without rich's panels."""

    @pytest.mark.parametrize(
        ("args", "env"), [(("--debug", "verify"), {}), (("verify",), {"METERING_DEBUG": "1"})], ids=["flag", "variable"]
    )
    def test_the_traceback_is_shown(self, tmp_path: Path, args: tuple[str, ...], env: dict[str, str]) -> None:
        result = metering(tmp_path, *args, METERING_DATABASE_URL=UNREACHABLE_DATABASE, **env)
        assert result.returncode == 1
        assert result.stderr.startswith("Traceback (most recent call last):")
        assert result.stderr.rstrip().splitlines()[-1].startswith("ConnectionRefusedError: ")
        assert "╭" not in result.stderr


class TestDescribe:
    """The table itself: what is expected, and what is left to a traceback."""

    def test_a_metering_error_is_a_runtime_failure(self) -> None:
        failure = describe(InvalidInput("period 2026-12 ends at 2027-01-01T00:00:00Z"))
        assert (failure.message, failure.exit_code) == ("period 2026-12 ends at 2027-01-01T00:00:00Z", RUNTIME)

    def test_failures_of_concurrent_units_are_told_by_the_first(self) -> None:
        group = ExceptionGroup("units", [ServiceUnavailable("provider a is down"), MeteringError("b")])
        assert describe(group).message == "provider a is down"

    def test_a_bug_keeps_its_traceback(self) -> None:
        assert describe(ValueError("period must be YYYY-MM")) is None
        assert describe(ExceptionGroup("units", [ServiceUnavailable("down"), KeyError("x")])) is None

    def test_a_file_error_names_the_file(self) -> None:
        failure = describe(PermissionError(13, "Permission denied", "/srv/metering/secrets.env"))
        assert (failure.message, failure.exit_code) == ("/srv/metering/secrets.env: Permission denied", RUNTIME)

    def test_invalid_settings_name_their_variables(self) -> None:
        with pytest.raises(ValidationError) as raised:
            Settings(environment="production", database_url="postgresql+asyncpg://db/metering", service_tokens="dev")
        failure = describe(raised.value)
        assert failure.exit_code == USAGE
        assert failure.message == "METERING_SERVICE_TOKENS must be set to a real secret in production"

    def test_a_described_failure_is_its_own_description(self) -> None:
        failure = CommandFailed("cannot write /x.csv: Permission denied")
        assert describe(failure) is failure
