"""The demo's setup rules: which month it plays, which folder it may wipe, which settings it runs on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from demo.month import SimulatedClock
from demo.report import display_usd
from demo.run import MARKER, NotADemoFolder, demo_period, demo_settings, prepare_data_dir
from metering.periods import set_clock_offset, utcnow


class TestDemoPeriod:
    def test_the_previous_month_once_its_grace_window_is_over(self) -> None:
        assert demo_period(datetime(2026, 11, 25, 22, 0, tzinfo=UTC), 48) == "2026-10"

    def test_two_months_back_while_the_previous_one_is_in_grace(self) -> None:
        assert demo_period(datetime(2026, 11, 2, 12, 0, tzinfo=UTC), 48) == "2026-09"

    def test_across_a_year_boundary(self) -> None:
        assert demo_period(datetime(2027, 1, 1, 0, 30, tzinfo=UTC), 0) == "2026-11"


class TestSimulatedClock:
    def test_moves_utcnow_to_a_day_of_the_period(self) -> None:
        clock = SimulatedClock("2026-02")
        try:
            clock.set(clock.at(28, 20))
            assert timedelta(0) <= utcnow() - datetime(2026, 2, 28, 20, tzinfo=UTC) < timedelta(seconds=5)
            assert clock.days == 28 and clock.at(29) == clock.end
        finally:
            set_clock_offset(timedelta(0))


class TestDataDir:
    def test_a_demo_folder_is_wiped_and_marked(self, tmp_path: Path) -> None:
        folder = tmp_path / "demo"
        prepare_data_dir(folder)
        (folder / "metering.db").write_text("old month")
        prepare_data_dir(folder)
        assert sorted(p.name for p in folder.iterdir()) == [MARKER]

    def test_a_folder_with_other_files_is_refused_and_kept(self, tmp_path: Path) -> None:
        (tmp_path / "thesis.tex").write_text("keep me")
        with pytest.raises(NotADemoFolder, match="not a demo data folder"):
            prepare_data_dir(tmp_path)
        assert (tmp_path / "thesis.tex").read_text() == "keep me"

    def test_an_empty_folder_is_used(self, tmp_path: Path) -> None:
        prepare_data_dir(tmp_path)
        assert (tmp_path / MARKER).exists()


def test_settings_are_the_embedded_default_whatever_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERING_DATABASE_URL", "postgresql+asyncpg://prod/db")
    monkeypatch.setenv("METERING_SERVICE_TOKENS", "prod-token")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_live_do_not_use")
    settings = demo_settings(tmp_path)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path.as_posix()}/metering.db"
    assert settings.service_token_list == ["metering-dev-token"]
    assert settings.stripe_api_key == ""
    assert settings.jwt_secret and (tmp_path / "secrets.env").exists()


@pytest.mark.parametrize(
    ("nano", "shown"),
    [
        (0, "$0.000000"),
        (499, "$0.000000"),
        (500, "$0.000001"),
        (1_234_567_890, "$1.234568"),
        (2_000_000_000_000, "$2,000.000000"),
    ],
)
def test_table_amounts_round_half_up_to_the_micro_dollar(nano: int, shown: str) -> None:
    assert display_usd(nano) == shown
