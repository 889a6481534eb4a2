"""``huggingface_hub.InferenceClient(base_url=…, api_key=…, bill_to=…)`` against the reference router:
answers, streams, refusals and custom keys as the client sees them, each checked afterwards in
Metering's billing API."""

from __future__ import annotations

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, IncompleteGenerationError

from demo.providers import CHAT_MODEL, HF_INFERENCE, MID_MODEL
from tests.clients.conftest import MESSAGES, World, assert_credits_used_up, in_thread, run_out_of_credits


def _client(world: World, user: str, *, bill_to: str | None = None) -> InferenceClient:
    return InferenceClient(base_url=f"{world.router_url}/v1", api_key=f"hf_test_{user}", bill_to=bill_to)


class TestServed:
    async def test_an_answer_billed_to_the_user(self, world: World) -> None:
        client = _client(world, "alice")
        output = await in_thread(lambda: client.chat_completion(MESSAGES, model=f"{CHAT_MODEL}:fireworks-ai"))
        assert output.choices[0].message.content == "Hello from the simulator."
        await world.collected()
        [item] = await world.requests_of("alice", as_user="alice")
        cost = world.cost_of("fireworks-ai", output.id)
        assert (item["request_id"], item["provider"], item["model"], item["user"]) == (
            output.id,
            "fireworks-ai",
            CHAT_MODEL,
            "alice",
        )
        assert (item["status"], item["cost_nano_usd"]) == ("priced", cost)
        assert (await world.billing_of("alice", as_user="alice"))["credits_used_nano_usd"] == cost

    async def test_a_stream_billed_to_the_org_through_bill_to(self, world: World) -> None:
        """A bare model: the router picks the first provider listing it that acme allows (together)."""
        client = _client(world, "alice", bill_to="acme")

        def ask() -> list:
            return list(
                client.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
            )

        chunks = await in_thread(ask)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == (
            "Hello from the simulator."
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        request_id = chunks[0].id
        await world.collected()
        [record] = await world.records()
        assert (record.bill_to, record.input_tokens, record.output_tokens) == ("acme", 12, 6)
        [item] = await world.requests_of("acme", as_user="alice")
        cost = world.cost_of("together", request_id)
        assert (item["request_id"], item["provider"], item["status"], item["cost_nano_usd"]) == (
            request_id,
            "together",
            "priced",
            cost,
        )
        assert (await world.billing_of("acme", as_user="alice"))["credits_used_nano_usd"] == cost
        assert (await world.billing_of("alice", as_user="alice"))["credits_used_nano_usd"] == 0

    async def test_a_stream_the_provider_cuts_raises_and_is_billed(self, world: World) -> None:
        await world.providers["together"].set_faults(world.http, {"cut_streams": 1, "cut_after_chunks": 3})
        client = _client(world, "alice")
        received: list[str] = []

        def read() -> None:
            for chunk in client.chat_completion(MESSAGES, model=f"{CHAT_MODEL}:together", stream=True):
                received.append(chunk.id)

        with pytest.raises(IncompleteGenerationError, match="provider together cut the stream"):
            await in_thread(read)
        assert len(received) == 3
        await world.collected()
        [item] = await world.requests_of("alice", as_user="alice")
        assert (item["request_id"], item["status"]) == (received[0], "priced")
        assert item["cost_nano_usd"] == world.cost_of("together", received[0])

    async def test_a_custom_key_request_named_by_the_provider_field(self, world: World) -> None:
        client = _client(world, "kai")
        output = await in_thread(
            lambda: client.chat_completion(MESSAGES, model=CHAT_MODEL, extra_body={"provider": "together"})
        )
        await world.collected()
        [item] = await world.requests_of("kai", as_user="kai")
        assert (item["request_id"], item["provider"], item["status"], item["cost_nano_usd"], item["custom_key"]) == (
            output.id,
            "together",
            "custom_key",
            None,
            True,
        )
        billing = await world.billing_of("kai", as_user="kai")
        assert (billing["credits_used_nano_usd"], billing["payg_nano_usd"], billing["held_nano_usd"]) == (0, 0, 0)


class TestRefused:
    async def test_a_free_user_out_of_credits_gets_a_402_with_our_message(self, world: World) -> None:
        client = _client(world, "mallory")

        def ask() -> str:
            return client.chat_completion(MESSAGES, model=f"{MID_MODEL}:{HF_INFERENCE}").id

        served, error = await run_out_of_credits(world, ask, HfHubHTTPError)
        assert isinstance(error, HfHubHTTPError) and error.response.status_code == 402
        assert "mallory has no included credits left this month" in str(error)
        await assert_credits_used_up(world, "mallory", served)

    async def test_a_provider_the_org_switched_off_is_a_403_with_our_message(self, world: World) -> None:
        client = _client(world, "alice", bill_to="acme")
        with pytest.raises(HfHubHTTPError) as refused:
            await in_thread(lambda: client.chat_completion(MESSAGES, model=f"{CHAT_MODEL}:fireworks-ai"))
        assert refused.value.response.status_code == 403
        assert "403 Forbidden: acme has switched off fireworks-ai; an admin of acme" in str(refused.value)
        await world.collected()
        assert await world.requests_of("acme", as_user="alice") == []
        billing = await world.billing_of("acme", as_user="alice")
        assert (billing["credits_used_nano_usd"], billing["held_nano_usd"]) == (0, 0)
        assert world.inference_calls()["fireworks-ai"] == 0

    async def test_a_non_member_naming_an_org_is_refused_and_nothing_is_billed(self, world: World) -> None:
        client = _client(world, "mallory", bill_to="acme")
        with pytest.raises(HfHubHTTPError, match="mallory is not a member of acme") as refused:
            await in_thread(lambda: client.chat_completion(MESSAGES, model=CHAT_MODEL))
        assert refused.value.response.status_code == 403
        await world.collected()
        assert await world.requests_of("acme", as_user="alice") == []
        assert await world.requests_of("mallory", as_user="mallory") == []
        assert sum(world.inference_calls().values()) == 0
