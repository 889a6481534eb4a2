"""The cost client against a real simulated provider on loopback: protocol, faults and their kinds."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import orjson
import pytest

from metering.collection.cost_client import CostClient, parse_retry_after
from metering.collection.errors import ProviderUnavailable
from metering.config import Settings
from simulator.server import SimulatorHandle, simulator_in_thread
from tests.conftest import make_settings

IDS = ["id-1", "id-2", "id-3"]


@pytest.fixture
def simulator() -> Iterator[SimulatorHandle]:
    with simulator_in_thread(seed=3) as handle:
        handle.preload(costs={"id-1": 111, "id-2": 222, "id-3": 333})
        yield handle


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return make_settings("sqlite+aiosqlite:///unused.db", tmp_path, **overrides)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[CostClient]:
    async with CostClient(_settings(tmp_path, cost_read_timeout_seconds=1.0, cost_max_response_bytes=4096)) as client:
        yield client


async def _fetch(
    client: CostClient, simulator: SimulatorHandle, token: str = "provider-token", ids: list[str] = IDS
) -> bytes:
    return await client.fetch(provider="sim", endpoint=simulator.cost_endpoint, token=token, request_ids=ids)


async def _failure(client: CostClient, simulator: SimulatorHandle, **kwargs: object) -> ProviderUnavailable:
    with pytest.raises(ProviderUnavailable) as caught:
        await _fetch(client, simulator, **kwargs)
    return caught.value


class TestProtocol:
    async def test_answers_the_costs_of_the_ids_asked(self, client: CostClient, simulator: SimulatorHandle) -> None:
        body = orjson.loads(await _fetch(client, simulator))
        assert body == {
            "requests": [{"requestId": rid, "costNanoUsd": cost} for rid, cost in zip(IDS, (111, 222, 333))]
        }

    async def test_sends_the_bearer_token_and_json(self, client: CostClient, simulator: SimulatorHandle) -> None:
        failure = await _failure(client, simulator, token="wrong-token")
        assert (failure.kind, failure.detail) == ("4xx", "cost endpoint refused the request (401)")


class TestFaults:
    async def test_5xx(self, client: CostClient, simulator: SimulatorHandle) -> None:
        simulator.set_faults(error_burst=1)
        assert (await _failure(client, simulator)).kind == "5xx"
        assert orjson.loads(await _fetch(client, simulator))["requests"][0]["costNanoUsd"] == 111

    async def test_429_with_retry_after_seconds(self, client: CostClient, simulator: SimulatorHandle) -> None:
        simulator.set_faults(rate_limit_burst=1, retry_after_seconds=7)
        failure = await _failure(client, simulator)
        assert (failure.kind, failure.retry_after_seconds) == ("429", 7.0)

    async def test_429_with_retry_after_http_date(self, client: CostClient, simulator: SimulatorHandle) -> None:
        simulator.set_faults(rate_limit_burst=1, retry_after_seconds=30, retry_after_format="http-date")
        failure = await _failure(client, simulator)
        assert failure.kind == "429"
        assert 27.0 <= failure.retry_after_seconds <= 31.0

    async def test_timeout(self, tmp_path: Path, simulator: SimulatorHandle) -> None:
        simulator.set_faults(slow_seconds=1.0)
        async with CostClient(_settings(tmp_path, cost_read_timeout_seconds=0.2)) as client:
            assert (await _failure(client, simulator)).kind == "timeout"

    async def test_connection_refused(self, client: CostClient) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: connections are refused
            with pytest.raises(ProviderUnavailable) as caught:
                await client.fetch(
                    provider="sim", endpoint=f"http://127.0.0.1:{port}/billing/costs", token="t", request_ids=IDS
                )
        assert caught.value.kind == "connect"

    async def test_html_with_200(self, client: CostClient, simulator: SimulatorHandle) -> None:
        simulator.set_faults(html_200=1)
        failure = await _failure(client, simulator)
        assert (failure.kind, failure.detail) == (
            "bad_response",
            "cost answer has content type 'text/html; charset=utf-8', not JSON",
        )

    async def test_wrong_content_type(self, client: CostClient, simulator: SimulatorHandle) -> None:
        simulator.set_faults(wrong_content_type=1)
        assert (await _failure(client, simulator)).kind == "bad_response"

    async def test_truncated_json_is_returned_for_validation_to_refuse(
        self, client: CostClient, simulator: SimulatorHandle
    ) -> None:
        simulator.set_faults(truncated_json=1)
        body = await _fetch(client, simulator)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)

    async def test_an_answer_over_the_size_limit_is_cut_off(
        self, client: CostClient, simulator: SimulatorHandle
    ) -> None:
        many = [f"id-{i}" for i in range(200)]
        simulator.preload(costs={rid: 1 for rid in many})
        failure = await _failure(client, simulator, ids=many)
        assert failure.kind == "bad_response"
        assert re.fullmatch(r"cost answer of \d{4} bytes exceeds the limit of 4096", failure.detail)

    async def test_a_streamed_answer_over_the_limit_is_cut_off(self, tmp_path: Path) -> None:
        """A chunked answer with no Content-Length: only a server that lies about size does this,
        which the simulator cannot be asked to do, hence a transport that streams one."""

        async def endless() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 1024

        def handler(_request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"content-type": "application/json"}, content=endless())

        settings = _settings(tmp_path, cost_max_response_bytes=8192)
        async with CostClient(settings, transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ProviderUnavailable) as caught:
                await client.fetch(provider="sim", endpoint="http://sim.test/billing/costs", token="t", request_ids=IDS)
        assert caught.value.detail == "cost answer exceeds the limit of 8192 bytes"


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"), [("5", 5.0), ("0", 1.0), ("999999", 3600.0), (None, None), ("soon", None)]
    )
    def test_seconds_are_clamped(self, value: str | None, seconds: float | None) -> None:
        assert parse_retry_after(value) == seconds

    def test_http_date(self) -> None:
        now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
        assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
        assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now=now) == 1.0
