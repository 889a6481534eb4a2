"""The real ``openai`` and ``huggingface_hub`` clients against the reference router on loopback, in front
of a real Metering and simulated providers: the world of ``tests.demo.conftest``.

The clients are synchronous, as most people use them: tests call them through ``asyncio.to_thread``
so that the servers, which run on the test's event loop, keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from demo.providers import HF_INFERENCE, MID_MODEL
from tests.demo.conftest import World, world

__all__ = ["MESSAGES", "World", "assert_credits_used_up", "in_thread", "run_out_of_credits", "world"]

T = TypeVar("T")
MESSAGES = [{"role": "user", "content": "What is metering?"}]
# A free plan's credits, in nano-USD, and the most an hf-inference MID_MODEL request costs (8 s on gpu-a10g).
FREE_CREDITS_NANO_USD = 100_000_000
MOST_A_REQUEST_COSTS_NANO_USD = 8_000_000


async def in_thread(call: Callable[[], T]) -> T:
    return await asyncio.to_thread(call)


async def run_out_of_credits(
    world: World, ask: Callable[[], str], refused: type[Exception]
) -> tuple[list[str], Exception]:
    """Call ``ask`` (one request of a free user, returning its id) until it raises ``refused``.

    Each record is delivered before the next request, so no estimate is in flight when the refusal
    comes: the credits left are then less than what one request is expected to cost.
    """
    served: list[str] = []
    for _ in range(FREE_CREDITS_NANO_USD // 2_000_000 + 1):  # the cheapest request costs 2,000,000
        try:
            served.append(await in_thread(ask))
        except refused as error:
            return served, error
        await world.delivered()
    raise AssertionError(f"never refused after {len(served)} requests")


async def assert_credits_used_up(world: World, user: str, served: list[str]) -> None:
    """Every served request priced at its compute time, the credits they used the sum, and too few left for one more."""
    await world.collected()
    items = await world.requests_of(user, as_user=user)
    assert sorted(item["request_id"] for item in items) == sorted(served)
    assert {(item["provider"], item["model"], item["status"]) for item in items} == {
        (HF_INFERENCE, MID_MODEL, "priced")
    }
    billing = await world.billing_of(user, as_user=user)
    assert billing["credits_granted_nano_usd"] == FREE_CREDITS_NANO_USD
    assert billing["credits_used_nano_usd"] == sum(item["cost_nano_usd"] for item in items)
    assert billing["credits_remaining_nano_usd"] < MOST_A_REQUEST_COSTS_NANO_USD
    assert (billing["payg_nano_usd"], billing["written_off_nano_usd"]) == (0, 0)
    assert world.inference_calls()[HF_INFERENCE] == len(served)
