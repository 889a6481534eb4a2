"""Headless Chromium for page tests: the Debian ``chromium`` driven by Playwright, and screenshots.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (or
``METERING_TEST_CHROMIUM``). Without it a browser test is skipped, unless
``METERING_TEST_REQUIRE_BROWSER=1``, when it fails instead (CI sets it).

Use the ``browser_page`` fixture (import it into the test module or a conftest), or
``open_page()`` directly; ``save_screenshot`` writes to ``METERING_ARTIFACTS_DIR``
(default ``<repo>/artifacts/``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_PATH = Path(os.environ.get("METERING_TEST_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER = os.environ.get("METERING_TEST_REQUIRE_BROWSER") == "1"
VIEWPORT = {"width": 1100, "height": 900}


def artifacts_dir() -> Path:
    path = Path(os.environ.get("METERING_ARTIFACTS_DIR") or REPO_ROOT / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_browser() -> str | None:
    """Why no browser test can run here, or None when Chromium and Playwright are both installed."""
    if not CHROMIUM_PATH.is_file() or not os.access(CHROMIUM_PATH, os.X_OK):
        return f"no Chromium at {CHROMIUM_PATH} (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


def require_browser() -> None:
    """Skip the calling test without a browser; fail it instead when one is required."""
    reason = missing_browser()
    if reason is None:
        return
    if REQUIRE_BROWSER:
        pytest.fail(f"a browser is required (METERING_TEST_REQUIRE_BROWSER=1): {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def open_page() -> AsyncIterator[Page]:
    """A fresh page of a new headless Chromium (its own cookies), closed after."""
    from playwright.async_api import async_playwright

    require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM_PATH), headless=True)
        try:
            context = await browser.new_context(viewport=VIEWPORT)
            yield await context.new_page()
        finally:
            await browser.close()


@pytest.fixture
async def browser_page() -> AsyncIterator[Page]:
    async with open_page() as page:
        yield page


async def save_screenshot(page: Page, name: str) -> Path:
    """The whole page as ``<artifacts>/<name>.png``; returns the path."""
    path = artifacts_dir() / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def read_fields(page: Page, scope: str = "#account, #summary, #limit, #providers") -> dict[str, int | str | None]:
    """``data-field`` → value of the elements under ``scope`` (CSS selectors, comma-separated): the
    integer of ``data-nano-usd``, ``data-cents`` or ``data-value``, None for ``data-null``, else the text.

    Numbers leave the DOM as attribute strings and become Python ints here: no float on the way.
    """
    entries = await page.eval_on_selector_all(
        ", ".join(f"{part.strip()} [data-field]" for part in scope.split(",")),
        """elements => elements.map(e => [
            e.dataset.field, e.dataset.nanoUsd ?? e.dataset.cents ?? e.dataset.value ?? null,
            e.dataset.null === "true", e.textContent.trim(),
        ])""",
    )
    return {
        name: int(number) if number is not None else (None if is_null else text)
        for name, number, is_null, text in entries
    }


async def read_chart_series(page: Page) -> list[tuple[str, int, int]]:
    """The usage chart's series in drawing order: (member, lines drawn, total priced nano-USD)."""
    series = await page.eval_on_selector_all(
        "svg[data-chart=usage] g.series",
        "groups => groups.map(g => [g.dataset.member, g.querySelectorAll('polyline').length, g.dataset.costNanoUsd])",
    )
    return [(member, lines, int(cost)) for member, lines, cost in series]
