"""The demo's bill depends only on its seed, and the other commands read the month it played: from the
default data folder with no settings at all, or from another one after the line the demo prints."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from demo import DEFAULT_SEED
from demo.providers import PROVIDERS, SimulatedProvider
from demo.run import MARKER, SECRETS_FILE, NotADemoFolder, demo_settings, pointing_lines, prepare_data_dir
from demo.scenario import ACCOUNTS, Traffic
from tests.demo.conftest import DemoRun, newcomer_env, run_demo_once

BILL = ("accounts", "providers", "totals")
TABLE_LINE = re.compile(r"^[┏┃┡│├└]")


@pytest.fixture(scope="module")
def rerun(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A second run: the default seed named explicitly, another data folder, a 60-column terminal."""
    directory = tmp_path_factory.mktemp("demo-rerun")
    return run_demo_once(directory, "--data-dir", str(directory / "elsewhere"), "--seed", str(DEFAULT_SEED), columns=60)


def _metering(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _ledger_accounts(cwd: Path, env: dict[str, str], period: str) -> set[str]:
    """The accounts of ``metering export ledger`` as run in ``cwd`` with ``env``."""
    out = cwd / f"ledger-{period}.csv"
    result = _metering(cwd, env, "export", "ledger", "--period", period, "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    with out.open(newline="") as handle:
        return {row["account_name"] for row in csv.DictReader(handle)}


class TestSameSeedSameBill:
    def test_a_second_run_with_the_same_seed_bills_the_same_nano_usd(self, demo_run: DemoRun, rerun: DemoRun) -> None:
        for name, account in demo_run.summary["accounts"].items():
            again = rerun.summary["accounts"][name]
            assert {key: again[key] for key in account if key.endswith(("_nano_usd", "_cents"))} == {
                key: value for key, value in account.items() if key.endswith(("_nano_usd", "_cents"))
            }, name
        assert {key: rerun.summary[key] for key in BILL} == {key: demo_run.summary[key] for key in BILL}

    def test_the_bill_is_not_nothing(self, demo_run: DemoRun) -> None:
        totals = demo_run.summary["totals"]
        assert totals["payg_nano_usd"] > 0 and totals["payable_nano_usd"] > totals["payg_nano_usd"]

    def test_the_seed_sets_each_providers_request_ids_and_costs(self) -> None:
        def first_answers(seed: int) -> list[tuple[str, int]]:
            return [SimulatedProvider(spec, seed).state.serve_inference() for spec in PROVIDERS]

        assert first_answers(DEFAULT_SEED) == first_answers(DEFAULT_SEED)
        other = first_answers(DEFAULT_SEED + 1)
        assert all(mine != theirs for mine, theirs in zip(first_answers(DEFAULT_SEED), other, strict=True))

    def test_a_days_requests_go_out_in_one_order(self) -> None:
        traffic = Traffic(httpx.AsyncClient(), "http://router.invalid")
        day_3 = [(habit.user, habit.provider, habit.bill_to, n) for habit, n in traffic.requests_of_day(3)]
        assert day_3 == [(habit.user, habit.provider, habit.bill_to, n) for habit, n in traffic.requests_of_day(3)]
        assert ("paula", "together", "acme", 0) in day_3  # a habit of days 3 and 17 only
        assert len(day_3) == len(traffic.requests_of_day(4)) + 1
        # Round after round: every habit's first request before anyone's second.
        rounds = [n for *_, n in day_3]
        assert rounds == sorted(rounds)


class TestOneDataFolder:
    def test_the_other_commands_read_the_demos_month_with_no_settings(self, demo_run: DemoRun) -> None:
        directory = demo_run.data_dir.parent
        assert demo_run.data_dir == directory / ".metering"
        assert "Other commands read this month too" in demo_run.output
        assert "METERING_DATA_DIR=" not in demo_run.output
        verify = _metering(directory, newcomer_env(COLUMNS="200"), "verify")
        assert verify.returncode == 0 and "ledger OK" in verify.stdout, verify.stdout + verify.stderr
        assert {account.name for account in ACCOUNTS} <= _ledger_accounts(directory, newcomer_env(), demo_run.period)

    def test_another_folder_comes_with_the_line_that_points_the_other_commands_at_it(
        self, rerun: DemoRun, tmp_path: Path
    ) -> None:
        [line] = [line.strip() for line in rerun.output.splitlines() if "METERING_DATA_DIR=" in line]
        assert line.startswith("export METERING_DATA_DIR=")
        data_dir = shlex.split(line.removeprefix("export "))[0].partition("=")[2]
        assert Path(data_dir) == rerun.data_dir.resolve()
        # Pasted into a shell in any other folder, the commands read that month.
        env = newcomer_env(METERING_DATA_DIR=data_dir, COLUMNS="200")
        verify = _metering(tmp_path, env, "verify")
        assert verify.returncode == 0 and "ledger OK" in verify.stdout, verify.stdout + verify.stderr
        assert {account.name for account in ACCOUNTS} <= _ledger_accounts(tmp_path, env, rerun.period)
        assert _ledger_accounts(tmp_path, newcomer_env(), rerun.period) == set()  # without it: another database

    def test_a_database_url_in_the_environment_is_named_too(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings = demo_settings(tmp_path / "demo")
        monkeypatch.delenv("METERING_DATA_DIR", raising=False)
        monkeypatch.setenv("METERING_DATABASE_URL", "postgresql+asyncpg://metering@db.invalid/metering")
        monkeypatch.setenv("METERING_ENVIRONMENT", "production")
        assert pointing_lines(settings) == [
            "unset METERING_ENVIRONMENT METERING_DATABASE_URL",
            f"export METERING_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}",
        ]
        monkeypatch.delenv("METERING_DATABASE_URL")
        monkeypatch.delenv("METERING_ENVIRONMENT")
        monkeypatch.setenv("METERING_DATA_DIR", str(settings.data_dir))
        assert pointing_lines(settings) == []

    def test_the_folder_keeps_its_secrets_but_refuses_anothers_data(self, tmp_path: Path) -> None:
        (tmp_path / SECRETS_FILE).write_text("jwt_secret=kept\n")  # as `metering token` leaves it
        prepare_data_dir(tmp_path)
        (tmp_path / "metering.db").write_text("last month")
        prepare_data_dir(tmp_path)
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted([MARKER, SECRETS_FILE])
        assert (tmp_path / SECRETS_FILE).read_text() == "jwt_secret=kept\n"
        served = tmp_path / "served"
        served.mkdir()
        (served / "metering.db").write_text("someone's accounts")
        with pytest.raises(NotADemoFolder, match="metering serve"):
            prepare_data_dir(served)
        assert (served / "metering.db").read_text() == "someone's accounts"


class TestNarrowTerminal:
    def test_every_table_line_fits_60_columns(self, rerun: DemoRun) -> None:
        table_lines = [line for line in rerun.output.splitlines() if TABLE_LINE.match(line)]
        assert len(table_lines) > 20
        assert max(len(line) for line in table_lines) <= 60
        assert "Left out for the terminal's width" in rerun.output
