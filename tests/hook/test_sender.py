"""``UsageSender`` against a stand-in usage service on loopback: batching, retries, splits, dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import orjson
import pytest

from metering_hook import Spool, UsageSender
from tests.hook.usage_stub import TOKEN, Scripted, UsageStub, usage_stub_server
from tests.support.servers import free_port


def rec(n: int, **extra: object) -> dict:
    return {"request_id": f"req-{n}", "provider": "together", "user": "alice", "model": "org/name", **extra}


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db") as value:
        yield value


@pytest.fixture
def stub() -> UsageStub:
    return UsageStub()


@pytest.fixture
def base_url(stub: UsageStub) -> Iterator[str]:
    with usage_stub_server(stub) as url:
        yield url


def sender_for(spool: Spool, base_url: str, **options: object) -> UsageSender:
    defaults: dict = {"batch_size": 100, "backoff_base": 0.01, "backoff_cap": 0.05, "interval": 0.05, "timeout": 5.0}
    return UsageSender(spool, base_url, TOKEN, **(defaults | options))


class TestFlush:
    async def test_delivers_everything_in_order_in_batches(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        spool.append_many(rec(n) for n in range(250))
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert [len(batch) for batch in stub.batches] == [100, 100, 50]
        assert [r["request_id"] for batch in stub.batches for r in batch] == [f"req-{n}" for n in range(250)]
        assert spool.pending_count() == 0
        assert (sender.stats.accepted, sender.stats.duplicates, sender.stats.dead_lettered) == (250, 0, 0)
        await sender.stop()

    async def test_empty_spool_sends_nothing(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        sender = sender_for(spool, base_url)
        assert await sender.flush(1) is True
        assert stub.requests == 0
        await sender.stop()

    async def test_resent_batch_counts_as_duplicates_once_stored(
        self, spool: Spool, stub: UsageStub, base_url: str
    ) -> None:
        spool.append_many(rec(n) for n in range(10))
        sender = sender_for(spool, base_url)
        await sender.flush(5)
        spool.append_many(rec(n) for n in range(10))  # as if the router died before forgetting them
        await sender.flush(5)
        assert len(stub.stored) == 10
        assert (sender.stats.accepted, sender.stats.duplicates) == (10, 10)
        assert spool.pending_count() == 0
        await sender.stop()


class TestTransientFailures:
    @pytest.mark.parametrize("status", [500, 502, 503, 429])
    async def test_keeps_the_batch_and_retries(self, spool: Spool, stub: UsageStub, base_url: str, status: int) -> None:
        stub.script = [Scripted(status, b'{"detail":"busy"}'), Scripted(status)]
        spool.append_many(rec(n) for n in range(3))
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert stub.requests == 3
        assert len(stub.stored) == 3
        assert sender.stats.failures == 2
        assert sender.stats.last_error == f"HTTP {status}: {HTTPStatus(status).phrase}"
        await sender.stop()

    async def test_retry_after_is_honoured(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        stub.script = [Scripted(429, headers={"Retry-After": "0.3"})]
        spool.append(rec(0))
        sender = sender_for(spool, base_url, backoff_cap=5.0)
        started = time.monotonic()
        assert await sender.flush(5) is True
        assert time.monotonic() - started >= 0.3
        await sender.stop()

    async def test_service_down_keeps_everything(self, spool: Spool) -> None:
        spool.append_many(rec(n) for n in range(5))
        sender = sender_for(spool, f"http://127.0.0.1:{free_port()}")
        assert await sender.flush(0.3) is False
        assert spool.pending_count() == 5
        assert sender.stats.failures >= 2
        assert "ConnectError" in (sender.stats.last_error or "")
        await sender.stop(timeout=0.1)

    async def test_unreadable_200_is_not_taken_as_delivery(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        stub.script = [Scripted(200, b"<html>proxy</html>")]
        spool.append(rec(0))
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert stub.requests == 2
        assert sender.stats.last_error == "HTTP 200 without a usage result"
        await sender.stop()

    async def test_wrong_token_backs_off_without_spinning(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        spool.append_many(rec(n) for n in range(5))
        sender = UsageSender(spool, base_url, "wrong-token", backoff_base=0.1, backoff_cap=0.2)
        assert await sender.flush(0.5) is False
        # Full jitter averages half the cap: a handful of tries in 0.5 s, not a busy loop.
        assert 1 <= stub.requests <= 15
        assert spool.pending_count() == 5
        assert spool.dead_letter_count() == 0
        assert (sender.stats.last_error or "").startswith("HTTP 401")
        await sender.stop(timeout=0)


class TestRefusedBatches:
    async def test_rejected_records_are_dead_lettered_with_the_reason(
        self, spool: Spool, stub: UsageStub, base_url: str
    ) -> None:
        stub.reject = lambda r: "unknown provider 'nope'" if r["provider"] == "nope" else None
        spool.append_many([rec(0), rec(1, provider="nope"), rec(2)])
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert sorted(stub.stored) == [("together", "req-0"), ("together", "req-2")]
        [dead] = spool.dead_letters()
        assert (dead.record["request_id"], dead.reason) == ("req-1", "unknown provider 'nope'")
        assert sender.stats.dead_lettered == 1
        await sender.stop()

    async def test_413_splits_the_batch_until_it_fits(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        stub.max_records = 30
        spool.append_many(rec(n) for n in range(100))
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert len(stub.stored) == 100
        assert max(len(batch) for batch in stub.batches) <= 30
        assert spool.dead_letter_count() == 0
        await sender.stop()

    async def test_422_isolates_and_dead_letters_the_malformed_record(
        self, spool: Spool, stub: UsageStub, base_url: str
    ) -> None:
        stub.poison = lambda r: "user" not in r
        spool.append_many(rec(n) for n in range(64))
        spool.append({"request_id": "bad", "provider": "together"})
        spool.append_many(rec(n) for n in range(64, 100))
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert len(stub.stored) == 100
        [dead] = spool.dead_letters()
        assert dead.record == {"request_id": "bad", "provider": "together"}
        assert dead.reason == "HTTP 422: records.0.user: required"
        assert stub.requests < 20
        await sender.stop()

    async def test_single_oversized_record_is_dead_lettered(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        stub.max_records = 0
        spool.append(rec(0))
        sender = sender_for(spool, base_url)
        assert await sender.flush(5) is True
        assert spool.dead_letters()[0].reason == "HTTP 413: body too large"
        await sender.stop()


class TestBackground:
    async def test_delivers_without_flush_and_stop_drains(self, spool: Spool, stub: UsageStub, base_url: str) -> None:
        sender = sender_for(spool, base_url)
        sender.start()
        spool.append(rec(0))
        for _ in range(100):
            if stub.stored:
                break
            await asyncio.sleep(0.02)
        assert list(stub.stored) == [("together", "req-0")]
        spool.append(rec(1))
        assert await sender.stop(timeout=5) is True
        assert len(stub.stored) == 2
        assert spool.pending_count() == 0

    async def test_survives_an_outage_then_catches_up(self, spool: Spool, stub: UsageStub) -> None:
        port = free_port()
        sender = sender_for(spool, f"http://127.0.0.1:{port}")
        sender.start()
        spool.append_many(rec(n) for n in range(20))
        await asyncio.sleep(0.2)
        assert spool.pending_count() == 20
        with usage_stub_server(stub, port=port):
            for _ in range(200):
                if spool.pending_count() == 0:
                    break
                await asyncio.sleep(0.02)
            assert await sender.stop(timeout=5) is True
        assert len(stub.stored) == 20
        assert orjson.loads(orjson.dumps(stub.stored[("together", "req-19")])) == rec(19)
