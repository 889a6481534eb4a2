"""The hook as its own distribution (``hook/``, ``metering-hook``): installed alone, it brings only
``httpx`` and delivers to a real Metering; the service depends on it at its own version and
``metering.hook`` is the same objects under the spec's name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import metering.hook as spec_named_hook
import metering_hook
from metering_hook import Spool
from tests.conftest import SERVICE_TOKEN
from tests.hook.test_end_to_end import kill_9, metering, read_until, stored
from tests.support import databases
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a router must not get by installing the hook: the server and its stack.
SERVER_ONLY = ("metering", "sqlalchemy", "fastapi", "starlette", "pydantic", "uvicorn", "alembic", "orjson")

PROBE = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, sys
    import metering_hook
    print(json.dumps({
        "file": metering_hook.__file__,
        "version": importlib.metadata.version("metering-hook"),
        "requires": importlib.metadata.requires("metering-hook"),
        "importable": sorted(name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None),
        "installed": sorted(dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()),
    }))
    """
)


def pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


class TestPackaging:
    def test_the_hook_is_released_at_the_service_version_and_the_service_requires_exactly_it(self) -> None:
        service, hook = pyproject(ROOT / "pyproject.toml"), pyproject(ROOT / "hook" / "pyproject.toml")
        assert hook["version"] == service["version"]
        [requirement] = [Requirement(item) for item in service["dependencies"] if item.startswith("metering-hook")]
        assert str(requirement.specifier) == f"=={service['version']}"

    def test_the_hook_needs_only_httpx(self) -> None:
        hook = pyproject(ROOT / "hook" / "pyproject.toml")
        assert [Requirement(item).name for item in hook["dependencies"]] == ["httpx"]

    def test_metering_hook_is_the_same_objects_under_the_spec_name(self) -> None:
        assert spec_named_hook.__all__ == metering_hook.__all__
        assert all(getattr(spec_named_hook, name) is getattr(metering_hook, name) for name in metering_hook.__all__)


@pytest.mark.slow
async def test_installed_alone_it_brings_no_server_and_delivers(tmp_path: Path, sqlite_template: Path) -> None:
    """``pip install ./hook`` into a fresh virtual environment, then a router process there spools
    and delivers to a real ``metering serve``."""
    source = shutil.copytree(
        ROOT / "hook",
        tmp_path / "hook",
        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"),  # a clean checkout's files
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(source)], capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, install.stderr

    # -I: neither the working directory nor PYTHONPATH can lend it the repository's packages.
    probe = subprocess.run(
        [python, "-I", "-c", PROBE, *SERVER_ONLY], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert Path(found["file"]).is_relative_to(venv)
    assert (found["version"], found["requires"]) == (pyproject(ROOT / "pyproject.toml")["version"], ["httpx>=0.27"])
    assert found["importable"] == []
    assert {"metering-hook", "httpx"} <= set(found["installed"])
    assert set(found["installed"]).isdisjoint(SERVER_ONLY)

    database_url = databases.copy_sqlite(sqlite_template, tmp_path)
    spool_path = tmp_path / "router" / "usage-spool.db"
    count = 5
    with metering(database_url, tmp_path, free_port()) as base_url:
        router_script = str(ROOT / "tests" / "hook" / "router_process.py")
        arguments = [str(spool_path), base_url, SERVICE_TOKEN, str(count), "0"]
        router = subprocess.Popen([python, "-I", router_script, *arguments], stdout=subprocess.PIPE, text=True)
        try:
            assert read_until(router, "spooled") == list(range(count))
            with Spool(spool_path) as spool:
                deadline = time.monotonic() + 30
                while spool.pending_count() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert spool.pending_count() == 0, "the router's sender did not empty its spool within 30 s"
        finally:
            kill_9(router)

    rows, request_ids, _ = await stored(database_url)
    assert (rows, request_ids) == (count, [f"req-{n:06d}" for n in range(count)])
