"""The deliver-webhooks job against real receivers on loopback that verify every signature."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs import collect_costs, deliver_webhooks
from metering import metrics
from metering.config import Settings, set_settings
from metering.db import Database
from metering.events.service import NewEvent, event_service
from metering.models import Event, WebhookDelivery
from metering.periods import current_period, utcnow
from metering.webhooks.service import webhook_service
from simulator.server import SimulatorHandle
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY, make_settings
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.factories.usage import create_pending_usage
from tests.jobs.conftest import run_ledger_verify
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver

ROOT = Path(__file__).resolve().parents[2]
PLATFORM_SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()


@pytest.fixture
def platform() -> Iterator[WebhookReceiver]:
    """The platform's receiver (METERING_WEBHOOK_URL)."""
    with webhook_receiver(PLATFORM_SECRET) as receiver:
        yield receiver


def configure(settings: Settings, tmp_path: Path, **overrides: object) -> Settings:
    """The test's settings with webhooks on: short timeouts and back-off, loopback endpoints allowed."""
    values: dict[str, object] = {
        "webhook_allow_private_urls": True,
        "webhook_retry_base_seconds": 0.01,
        "webhook_timeout_seconds": 2.0,
        "webhook_lease_seconds": 3,
        **overrides,
    }
    value = make_settings(settings.database_url, tmp_path, **values)
    set_settings(value)
    return value


def with_platform(settings: Settings, tmp_path: Path, platform: WebhookReceiver, **overrides: object) -> Settings:
    return configure(settings, tmp_path, webhook_url=platform.url, webhook_secret=PLATFORM_SECRET, **overrides)


async def emit(db: Database, *events: NewEvent) -> None:
    async with db.session_scope() as session:
        await event_service.emit(session, list(events))


def threshold(account: str = "acme", percent: int = 50) -> NewEvent:
    period = current_period()
    key = f"credits.threshold:{account}:{period}:{percent}"
    return NewEvent("credits.threshold", account, period, key, {"percent": percent})


async def orgs(db: Database, *names: str) -> None:
    async with db.session_scope() as session:
        for name in names:
            await create_account(session, name, plan="team", seats=2)


async def register(db: Database, org: str, receiver: WebhookReceiver) -> int:
    """An endpoint of ``org`` sending to ``receiver``, which learns its secret."""
    url = await webhook_service.check_endpoint_url(receiver.url)
    async with db.session_scope() as session:
        endpoint, secret = await webhook_service.register_endpoint(
            session, account_name=org, url=url, description=None, actor="admin"
        )
    receiver.secret = secret
    return endpoint.id


async def deliveries(db: Database) -> list[WebhookDelivery]:
    async with db.session_scope() as session:
        return list(await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class TestDoneWhen:
    async def test_a_pro_user_crossing_half_its_credits_gets_one_signed_event(
        self,
        db: Database,
        settings: Settings,
        tmp_path: Path,
        simulator: SimulatorHandle,
        platform: WebhookReceiver,
    ) -> None:
        # The platform's URL is the operator's own: a loopback one is sent to without
        # METERING_WEBHOOK_ALLOW_PRIVATE_URLS, which is about the URLs org admins give.
        with_platform(settings, tmp_path, platform, webhook_allow_private_urls=False)
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
            await create_provider(session, "together", url=simulator.base_url, cost_token="provider-token")
            await create_pending_usage(session, provider_id="together", request_ids=["big-1", "small-1"], user="alice")
        # 1.1 USD of the pro plan's 2 USD: past 50 %, short of 80 %.
        simulator.preload(costs={"big-1": 1_000_000_000, "small-1": 100_000_000})

        assert "priced=2" in await collect_costs.run_once(db)
        summary = await deliver_webhooks.run_once(db)

        assert "delivered=1" in summary
        [received] = platform.wait_for(1)
        assert received.verified
        assert received.payload["type"] == "credits.threshold"
        assert received.payload["data"] == {
            "account": "alice",
            "period": current_period(),
            "percent": 50,
            "credits_granted_nano_usd": 2_000_000_000,
            "credits_used_nano_usd": 1_100_000_000,
        }
        async with db.session_scope() as session:
            assert received.webhook_id == await session.scalar(select(Event.webhook_id))
        assert "delivered=0" in await deliver_webhooks.run_once(db)
        assert len(platform.events()) == 1
        await run_ledger_verify(db)


class TestRetries:
    async def test_a_500_then_a_200_gets_the_same_webhook_id_twice_and_nothing_else(
        self, db: Database, settings: Settings, tmp_path: Path, platform: WebhookReceiver
    ) -> None:
        with_platform(settings, tmp_path, platform)
        platform.statuses = [500]
        await emit(db, threshold())
        before = sample("metering_webhook_deliveries_total", outcome="retry", reason="rejected")

        assert "retry=1" in await deliver_webhooks.run_once(db)
        [delivery] = await deliveries(db)
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
        assert sample("metering_webhook_deliveries_total", outcome="retry", reason="rejected") - before == 1
        assert sample("metering_webhook_oldest_undelivered_seconds") > 0
        await asyncio.sleep(0.05)  # the back-off: 0.01 s × [1, 1.2]

        assert "delivered=1" in await deliver_webhooks.run_once(db)
        assert "delivered=0" in await deliver_webhooks.run_once(db)

        first, second = platform.events()
        assert len(platform.events()) == 2
        assert first.webhook_id == second.webhook_id and first.body == second.body
        assert first.verified and second.verified
        [delivery] = await deliveries(db)
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200)
        assert sample("metering_webhook_oldest_undelivered_seconds") == 0.0

    async def test_past_its_retry_window_a_delivery_fails_and_can_be_replayed(
        self, db: Database, settings: Settings, tmp_path: Path, platform: WebhookReceiver
    ) -> None:
        configure(settings, tmp_path, webhook_retry_window_seconds=0)
        platform.default_status = 503
        await orgs(db, "acme")
        await register(db, "acme", platform)  # here an org endpoint: no platform URL is configured
        await emit(db, threshold())

        assert "failed=1" in await deliver_webhooks.run_once(db)
        [delivery] = await deliveries(db)
        assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 1, "answered HTTP 503")
        assert sample("metering_webhook_oldest_undelivered_seconds") == 0.0

        platform.default_status = 204
        async with db.session_scope() as session:
            replayed = await webhook_service.replay(session, account_name="acme", delivery_id=delivery.id)
        assert replayed.status == "pending"
        assert "delivered=1" in await deliver_webhooks.run_once(db)
        first, second = platform.events()
        assert first.webhook_id == second.webhook_id and second.verified


class TestIsolation:
    async def test_an_endpoint_that_hangs_does_not_delay_the_others(
        self, db: Database, settings: Settings, tmp_path: Path, platform: WebhookReceiver
    ) -> None:
        # Four slots: the hanging endpoint may hold two of them, the platform gets the rest.
        with_platform(settings, tmp_path, platform, webhook_concurrency=4)
        await orgs(db, "acme")
        with webhook_receiver("whsec_") as hanging:
            hanging.hang(30)
            await register(db, "acme", hanging)
            await emit(db, *(threshold(percent=p) for p in range(1, 11)))

            started = time.monotonic()
            job = asyncio.create_task(deliver_webhooks.run_once(db))
            received = await asyncio.to_thread(platform.wait_for, 10, 1.5)
            assert not job.done()  # the hanging endpoint's attempts are still in flight
            summary = await job

            assert all(event.verified for event in received)
            assert max(event.at for event in received) - started < 1.5
            assert len(hanging.events()) == 2  # then it was left alone for the rest of the pass
            hanging.release()
        assert "delivered=10" in summary and "retry=2" in summary
        by_target = {}
        for delivery in await deliveries(db):
            by_target.setdefault(delivery.target, []).append((delivery.status, delivery.attempts, delivery.last_error))
        assert by_target["platform"] == [("delivered", 1, None)] * 10
        assert (
            sorted(by_target[next(t for t in by_target if t != "platform")])
            == [("pending", 0, None)] * 8 + [("pending", 1, "no answer within 2 s")] * 2
        )

    async def test_each_org_endpoint_gets_its_orgs_events_and_the_platform_gets_all(
        self, db: Database, settings: Settings, tmp_path: Path, platform: WebhookReceiver
    ) -> None:
        with_platform(settings, tmp_path, platform)
        await orgs(db, "acme", "globex")
        period = current_period()
        quarantine = NewEvent("provider.quarantine", "acme", period, "provider.quarantine:together:1", {"count": 1})
        with webhook_receiver("whsec_") as acme, webhook_receiver("whsec_") as globex:
            await emit(db, threshold("acme", 10))  # before acme's endpoint existed
            await register(db, "acme", acme)
            await register(db, "globex", globex)
            await emit(db, threshold("acme", 50), threshold("globex", 50), quarantine)

            assert "delivered=6" in await deliver_webhooks.run_once(db)

            assert sorted((e.payload["type"], e.payload["data"]["account"]) for e in platform.events()) == [
                ("credits.threshold", "acme"),
                ("credits.threshold", "acme"),
                ("credits.threshold", "globex"),
                ("provider.quarantine", "acme"),
            ]
            assert [(e.payload["data"]["account"], e.payload["data"]["percent"]) for e in acme.events()] == [
                ("acme", 50)
            ]
            assert [e.payload["data"]["account"] for e in globex.events()] == ["globex"]
            assert all(e.verified for e in platform.events() + acme.events() + globex.events())


class TestUrlsCheckedAgainAtDelivery:
    async def test_an_endpoint_that_now_resolves_to_loopback_is_not_sent_to(
        self, db: Database, settings: Settings, tmp_path: Path
    ) -> None:
        configure(settings, tmp_path)
        await orgs(db, "acme")
        with webhook_receiver("whsec_") as receiver:
            await register(db, "acme", receiver)  # allowed while private URLs are
            configure(settings, tmp_path, webhook_allow_private_urls=False)
            await emit(db, threshold())

            assert "retry=1" in await deliver_webhooks.run_once(db)
            assert receiver.events() == []
        [delivery] = await deliveries(db)
        assert delivery.status == "pending"
        assert "127.0.0.1, a loopback address" in delivery.last_error


class TestKilledDeliverer:
    async def test_a_deliverer_killed_mid_send_loses_nothing(
        self, db: Database, settings: Settings, tmp_path: Path, platform: WebhookReceiver
    ) -> None:
        with_platform(settings, tmp_path, platform)
        await emit(db, threshold())
        platform.hang(60)
        env = {
            **os.environ,
            "METERING_DATABASE_URL": settings.database_url,
            "METERING_DATA_DIR": str(tmp_path / "deliverer"),
            "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
            "METERING_SECRET_KEY": TEST_SECRET_KEY,
            "METERING_JWT_SECRET": TEST_JWT_SECRET,
            "METERING_WEBHOOK_URL": platform.url,
            "METERING_WEBHOOK_SECRET": PLATFORM_SECRET,
            # Killed well within its attempt's timeout; the lease lapses a second after that.
            "METERING_WEBHOOK_TIMEOUT_SECONDS": "3",
            "METERING_WEBHOOK_LEASE_SECONDS": "4",
        }
        command = [sys.executable, "-m", "cli.main", "jobs", "run-once", "deliver-webhooks"]
        deliverer = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await asyncio.to_thread(platform.wait_for, 1, 60)  # the request is on the wire
        finally:
            deliverer.send_signal(signal.SIGKILL)
            deliverer.wait(timeout=10)
        platform.release()
        [delivery] = await deliveries(db)
        assert (delivery.status, delivery.attempts) == ("pending", 0)
        assert delivery.lease_owner is not None

        # Not sent again while the dead deliverer's lease holds, and sent once it has lapsed.
        assert "delivered=0" in await deliver_webhooks.run_once(db)
        await asyncio.sleep(max((delivery.lease_until - utcnow()).total_seconds(), 0) + 0.1)
        assert "delivered=1" in await deliver_webhooks.run_once(db)

        first, second = platform.events()
        assert first.webhook_id == second.webhook_id and first.verified and second.verified
        [delivery] = await deliveries(db)
        assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("delivered", 1, None)
