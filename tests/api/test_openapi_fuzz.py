"""Every operation of the OpenAPI schema, fuzzed against the app on a seeded SQLite database.

Schemathesis builds requests from the schema itself (its examples first, then generated
data, valid and invalid) and checks each answer: never a 5xx, a documented status code, a
documented content type, and a body that matches the documented schema. Calls carry a
valid service token (internal routes) or a finance + platform_admin JWT of an acme admin,
so most of them get past authentication; schemathesis also drops the credentials on some.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from api.app import create_app
from metering.config import get_settings, set_settings
from metering.db import Database
from metering.events.service import NewEvent, event_service
from metering.webhooks.delivery import delivery_service
from metering.webhooks.service import webhook_service
from tests.conftest import SERVICE_TOKEN, make_settings
from tests.factories.accounts import add_member, create_account
from tests.factories.billing_data import insert_usage, make_token, seed_world
from tests.support import databases, localstripe

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The test suite draws the same examples every run, so a failure is a change of the code, not
# of luck. METERING_FUZZ_EXPLORE=1 draws new ones, four times as many: run it to look for bugs.
EXPLORE = os.environ.get("METERING_FUZZ_EXPLORE") == "1"
# Not alice: the fuzzed membership routes may remove alice (the schema's example) from acme.
OPERATOR = "ops"
PLATFORM_JWT = make_token(OPERATOR, roles=("finance", "platform_admin"), expires_in=24 * 3600)
# (operation label, status) of every call the fuzz made, for the coverage check below.
ANSWERED: Counter[tuple[str, int]] = Counter()


async def _seed(database_url: str) -> None:
    """The accounts and providers of the other API tests, an acme admin for the JWT, and two requests."""
    db = Database(database_url)
    try:
        await seed_world(db)
        async with db.session_scope() as session:
            await create_account(session, OPERATOR, plan="pro")
            await add_member(session, org="acme", user=OPERATOR, role="admin")
        started_at = datetime.now(UTC).replace(day=1, hour=1, minute=0, second=0, microsecond=0)
        await insert_usage(
            db,
            [
                {
                    "request_id": "p1",
                    "user": "alice",
                    "billing_account": "acme",
                    "started_at": started_at,
                    "status": "priced",
                    "cost": 120_000,
                    "estimate": 100_000,
                },
                {
                    "request_id": "p2",
                    "user": "bob",
                    "billing_account": "acme",
                    "started_at": started_at,
                    "estimate": 100_000,
                },
            ],
        )
        await _seed_webhooks(db)
    finally:
        await db.dispose()


async def _seed_webhooks(db: Database) -> None:
    """acme's webhook endpoint 1 and its delivery 1 of one event, for the routes that name them."""
    url = await webhook_service.check_endpoint_url("https://93.184.215.14/metering")
    async with db.session_scope() as session:
        await webhook_service.register_endpoint(session, account_name="acme", url=url, description=None, actor=OPERATOR)
        event = NewEvent("credits.threshold", "acme", "2026-12", "credits.threshold:acme:2026-12:50", {"percent": 50})
        await event_service.emit(session, [event])
    async with db.session_scope() as session:
        await delivery_service.fan_out(session, settings=get_settings())


@pytest.fixture(scope="module")
def fuzz_schema(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    directory = tmp_path_factory.mktemp("fuzz")
    database_url = databases.copy_sqlite(sqlite_template, directory)
    with localstripe.localstripe_server() as stripe_url:
        # With a webhook secret the Stripe route checks signatures (400) instead of refusing to work (503);
        # with an API key (localstripe's), top-ups create PaymentIntents instead of answering 503.
        app_settings = make_settings(database_url, directory).model_copy(
            update={
                "stripe_webhook_secret": "whsec_fuzz",
                "stripe_api_key": localstripe.API_KEY,
                "stripe_api_base": stripe_url,
            }
        )
        set_settings(app_settings)
        asyncio.run(_seed(database_url))
        # The app owns its engine (made by its lifespan), so every connection lives on the event
        # loop schemathesis runs the app on.
        app = create_app(app_settings)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
        asgi.shutdown_lifespans()
        set_settings(None)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def _credentials(path: str) -> dict[str, str]:
    token = SERVICE_TOKEN if path.startswith("/internal/") else PLATFORM_JWT
    return {"Authorization": f"Bearer {token}"}


@schema.parametrize()
@settings(
    max_examples=100 if EXPLORE else 25, derandomize=not EXPLORE, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    response = case.call_and_validate(headers=_credentials(case.path), checks=CHECKS)
    ANSWERED[(f"{case.method} {case.path}", response.status_code)] += 1


def _spec(directory: Path) -> dict:
    """The app's OpenAPI document (building it opens no database)."""
    return create_app(make_settings(f"sqlite+aiosqlite:///{directory}/unused.db", directory)).openapi()


def test_the_fuzz_got_past_authentication_everywhere(tmp_path: Path) -> None:
    """Each operation answered 2xx at least once: the fuzz reached the code behind auth and validation.

    Stripe events are trusted only when signed over the exact body, which generated data never is.
    """
    if not ANSWERED:
        pytest.skip("the fuzz test did not run in this session")
    succeeded = {operation for operation, status in ANSWERED if 200 <= status < 300}
    paths = _spec(tmp_path)["paths"]
    documented = {f"{method.upper()} {path}" for path, methods in paths.items() for method in methods}
    assert documented - succeeded == {"POST /webhooks/stripe"}


def _component(spec: dict, reference: str) -> dict:
    return spec["components"]["schemas"][reference.rsplit("/", 1)[-1]]


def test_every_operation_is_described_with_examples(tmp_path: Path) -> None:
    """A summary and a description on every operation; an example for every JSON body and path parameter."""
    spec = _spec(tmp_path)
    missing = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            label = f"{method.upper()} {path}"
            if not operation.get("summary") or not operation.get("description"):
                missing.append(f"{label}: summary/description")
            for media in operation.get("requestBody", {}).get("content", {}).values():
                body_schema = media.get("schema", {})
                if "$ref" in body_schema:
                    body_schema = _component(spec, body_schema["$ref"])
                if not ({"example", "examples"} & set(media) or "examples" in body_schema):
                    missing.append(f"{label}: body example")
            for parameter in operation.get("parameters", []):
                parameter_schema = parameter.get("schema", {})
                if parameter["in"] == "path" and not {"examples", "enum"} & set(parameter_schema):
                    missing.append(f"{label}: example of {parameter['name']}")
    assert missing == []
