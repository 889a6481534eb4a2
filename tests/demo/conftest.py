"""One ``metering demo --no-serve`` run per test session, shared by every test that looks at its month.

Other test packages reuse it with ``from tests.demo.conftest import demo_run`` (a fixture
imported into a test module is collected there), or call ``run_demo_once`` themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from demo.run import demo_settings

# SPEC'd budget of the whole command; the demo aims at well under half of it.
DEMO_TIME_LIMIT_SECONDS = 120


@dataclass(frozen=True)
class DemoRun:
    data_dir: Path
    database_url: str
    summary: dict
    jwt_secret: str
    seconds: float
    returncode: int
    output: str

    @property
    def period(self) -> str:
        return self.summary["period"]


def newcomer_env(**extra: str) -> dict[str, str]:
    """The environment of a shell that never set a ``METERING_`` variable: every command's defaults apply."""
    return {key: value for key, value in os.environ.items() if not key.startswith("METERING_")} | extra


def run_demo_once(directory: Path, *options: str, columns: int = 160) -> DemoRun:
    """``metering demo --no-serve`` in a subprocess run in ``directory``, on the default data folder
    (``directory/.metering``) unless ``options`` name another; the summary goes to ``directory``."""
    data_dir, summary_path = directory / ".metering", directory / "summary.json"
    if "--data-dir" in options:
        data_dir = Path(options[options.index("--data-dir") + 1])
    command = [sys.executable, "-m", "cli.main", "demo", "--no-serve", "--json-summary", str(summary_path), *options]
    started = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=DEMO_TIME_LIMIT_SECONDS * 2,
        cwd=directory,
        env=newcomer_env(COLUMNS=str(columns)),
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode != 0 or not summary_path.exists():
        pytest.fail(f"metering demo failed with exit code {result.returncode}:\n{output[-4000:]}")
    settings = demo_settings(data_dir)  # reads the secrets the demo generated; wipes nothing
    return DemoRun(
        data_dir=data_dir,
        database_url=settings.database_url,
        summary=orjson.loads(summary_path.read_bytes()),
        jwt_secret=settings.jwt_secret,
        seconds=seconds,
        returncode=result.returncode,
        output=output,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_demo_once(tmp_path_factory.mktemp("demo"))
