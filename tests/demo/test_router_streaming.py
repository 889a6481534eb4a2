"""``"stream": true`` through the reference router, against a real Metering and simulated providers on
loopback: chunks are relayed as they come, and each stream is recorded once, however it ends."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import httpx
import orjson

from demo.providers import CHAT_MODEL, HARDWARE_PRICES, HF_INFERENCE, MID_MODEL, compute_time_ms
from metering.money import duration_cost_nano
from tests.demo.conftest import World

MESSAGES = [{"role": "user", "content": "hi"}]


async def _stream(
    world: World, body: dict, *, token: str = "tok-alice", bill_to: str | None = None, stop_after: int | None = None
) -> tuple[httpx.Response, list[dict], list[float]]:
    """Stream through the router: the response, its parsed events (``[DONE]`` as ``{}``), when each arrived.

    ``stop_after``: hang up after that many events, as a client that goes away mid-stream.
    """
    headers = {"Authorization": f"Bearer {token}"} | ({"X-HF-Bill-To": bill_to} if bill_to else {})
    events: list[dict] = []
    arrivals: list[float] = []
    url = f"{world.router_url}/v1/chat/completions"
    async with world.http.stream("POST", url, json={"stream": True, **body}, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response, events, arrivals
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append({} if line == "data: [DONE]" else orjson.loads(line[6:]))
                arrivals.append(time.monotonic())
                if stop_after is not None and len(events) >= stop_after:
                    break
    return response, events, arrivals


def _text(events: list[dict]) -> str:
    return "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event.get("choices"))


async def _faults(world: World, provider_id: str, **faults: object) -> None:
    await world.providers[provider_id].set_faults(world.http, faults)


class TestRelay:
    async def test_chunks_arrive_as_the_provider_sends_them(self, world: World) -> None:
        """Each chunk comes through on its own: a buffering router would deliver them all at once."""
        await _faults(world, "together", stream_chunk_delay_seconds=0.25)
        response, events, arrivals = await _stream(world, {"model": f"{CHAT_MODEL}:together", "max_tokens": 3})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Inference-Provider"] == "together"
        assert len(events) == 6 and events[-1] == {}  # role, 3 tokens, finish, [DONE]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:5])]
        assert statistics.median(gaps) >= 0.15, gaps

    async def test_one_record_with_the_tokens_of_the_final_chunk(self, world: World) -> None:
        body = {"model": f"{CHAT_MODEL}:together", "stream_options": {"include_usage": True}, "messages": MESSAGES}
        _, events, _ = await _stream(world, body, bill_to="acme")
        assert _text(events) == "Hello from the simulator."
        assert events[-2]["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
        await world.collected()
        [record] = await world.records()
        assert record.request_id == events[0]["id"]
        assert (record.billing_account, record.bill_to, record.input_tokens, record.output_tokens) == (
            "acme",
            "acme",
            12,
            6,
        )
        assert (record.status, record.cost_nano_usd) == ("priced", world.cost_of("together", record.request_id))
        assert world.router_app.state.hook.stats.recorded == 1

    async def test_without_a_usage_chunk_the_record_has_no_tokens(self, world: World) -> None:
        _, events, _ = await _stream(world, {"model": f"{CHAT_MODEL}:fireworks-ai", "messages": MESSAGES})
        await world.delivered()
        [record] = await world.records()
        assert (record.request_id, record.input_tokens, record.output_tokens) == (events[0]["id"], None, None)

    async def test_a_compute_time_stream_is_priced_by_its_compute_time(self, world: World) -> None:
        _, events, _ = await _stream(world, {"model": f"{MID_MODEL}:{HF_INFERENCE}", "messages": MESSAGES})
        await world.delivered()
        [record] = await world.records()
        expected_ms = compute_time_ms(world.providers[HF_INFERENCE].seed, events[0]["id"], 2_000, 8_000)
        assert (record.duration_ms, record.hardware, record.status) == (expected_ms, "gpu-a10g", "priced")
        assert record.cost_nano_usd == duration_cost_nano(expected_ms, HARDWARE_PRICES["gpu-a10g"])

    async def test_a_refused_stream_is_an_error_body_not_a_stream(self, world: World) -> None:
        response, events, _ = await _stream(world, {"model": f"{CHAT_MODEL}:fireworks-ai"}, bill_to="acme")
        assert (response.status_code, events) == (403, [])
        assert response.json()["error"]["code"] == "provider_disabled"


class TestEndings:
    async def test_a_client_that_hangs_up_mid_stream_is_still_recorded(self, world: World) -> None:
        """Recorded when the client leaves, not when the provider would have finished (about 10 s later)."""
        await _faults(world, "together", stream_chunk_delay_seconds=0.2)
        body = {"model": f"{CHAT_MODEL}:together", "max_tokens": 50, "messages": MESSAGES}
        hung_up = time.monotonic()
        _, events, _ = await _stream(world, body, stop_after=2)
        request_id = events[0]["id"]
        records = []
        while not records and time.monotonic() - hung_up < 5:
            await world.delivered()
            records = await world.records()
            await asyncio.sleep(0.05)
        assert [record.request_id for record in records] == [request_id]
        await world.collected()
        [item] = await world.requests_of("alice", as_user="alice")
        assert (item["request_id"], item["status"]) == (request_id, "priced")
        assert item["cost_nano_usd"] == world.cost_of("together", request_id)
        assert world.router_app.state.hook.stats.recorded == 1

    async def test_a_stream_the_provider_cuts_ends_with_an_error_event_and_is_billed(self, world: World) -> None:
        await _faults(world, "together", cut_streams=1, cut_after_chunks=3)
        response, events, _ = await _stream(world, {"model": f"{CHAT_MODEL}:together", "messages": MESSAGES})
        assert response.status_code == 200
        *chunks, last = events
        assert len(chunks) == 3 and _text(chunks) == "Hello from"
        assert last["error"]["code"] == "stream_interrupted"
        assert last["error"]["message"].startswith("provider together cut the stream")
        await world.collected()
        [record] = await world.records()
        assert (record.request_id, record.status) == (chunks[0]["id"], "priced")
        assert record.cost_nano_usd == world.cost_of("together", record.request_id)

    async def test_every_stream_is_recorded_once(self, world: World) -> None:
        bodies = [
            {"model": f"{CHAT_MODEL}:{provider}", "messages": MESSAGES} for provider in ("together", "fireworks-ai")
        ]
        results = await asyncio.gather(*(_stream(world, body) for body in bodies * 3))
        await world.delivered()
        served = sorted(events[0]["id"] for _, events, _ in results)
        assert sorted(record.request_id for record in await world.records()) == served
        assert len(set(served)) == 6 and world.router_app.state.hook.stats.recorded == 6
