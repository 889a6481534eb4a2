"""Fixtures of the invoicing tests: seeded accounts and providers, and a localstripe server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metering.config import Settings, set_settings
from metering.db import Database
from tests.metering.invoicing.helpers import seed
from tests.support import localstripe


@pytest.fixture
async def seeded(db: Database) -> Database:
    await seed(db)
    return db


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    with localstripe.localstripe_server() as url:
        yield url


@pytest.fixture
def stripe_settings(settings: Settings, localstripe_url: str) -> Iterator[Settings]:
    """The test's settings pointed at an emptied localstripe."""
    localstripe.reset(localstripe_url)
    value = settings.model_copy(update={"stripe_api_key": localstripe.API_KEY, "stripe_api_base": localstripe_url})
    set_settings(value)
    yield value
    set_settings(settings)
